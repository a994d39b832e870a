"""rollouts 0002: the approval request id of an action becomes a foreign key and keeps its value;
an id that names no request is kept in the action's result instead of breaking the migration.
rollouts 0004: triggers get their breach, flapping, lateness and no-data settings with the
defaults, and signals their `late` flag, keeping every existing row."""

from __future__ import annotations

import pytest
from django.db import IntegrityError, connection
from django.db.migrations.executor import MigrationExecutor

from rollouts import containment, proposals
from rollouts.models import RolloutAction

pytestmark = pytest.mark.django_db(transaction=True)

BEFORE, AFTER = ("rollouts", "0001_initial"), ("rollouts", "0002_rolloutaction_approval_request_fk")


def migrate(target: tuple[str, str]) -> None:
    executor = MigrationExecutor(connection)
    executor.loader.build_graph()
    executor.migrate([target])


@pytest.fixture(autouse=True)
def _back_to_the_latest_migration():
    """The tests below migrate backwards: every later test needs the schema of the latest one."""
    yield
    executor = MigrationExecutor(connection)
    executor.migrate(executor.loader.graph.leaf_nodes())


def test_approval_request_ids_survive_and_an_orphan_id_moves_to_the_result(live_plan, owner):
    gated = proposals.propose_action(live_plan.pk, kind="rollback", handling="gate", tier=3, origin="trigger",
                                     evidence={}, reason="p95 above 800 ms").action
    paused = containment.pause_rollout(live_plan.pk, actor=owner, reason="quality dip")
    request_id = gated.approval_request_id
    migrate(BEFORE)
    try:
        with connection.cursor() as cursor:  # a bare integer column again: any value goes in
            cursor.execute("UPDATE rollouts_rolloutaction SET approval_request_id = %s WHERE id = %s",
                           [request_id + 1000, paused.pk])
    finally:
        migrate(AFTER)
    gated.refresh_from_db()
    paused.refresh_from_db()
    assert gated.approval_request.pk == request_id
    assert gated.approval_request.rollout_actions.get() == gated
    assert paused.approval_request is None and paused.result == {"missing_approval_request": request_id + 1000}
    with pytest.raises(IntegrityError):  # from now on the database refuses an id that names nothing
        RolloutAction.objects.filter(pk=paused.pk).update(approval_request_id=request_id + 1000)


CONTAINMENT = ("rollouts", "0004_containment_under_real_signals")


def test_existing_triggers_and_signals_keep_their_data_and_get_the_safe_defaults(live_plan):
    from rollouts.models import Metric, RollbackTrigger, Signal

    latency = Metric.objects.get(slug="latency_p95_ms")
    before = list(RollbackTrigger.objects.filter(plan=live_plan).order_by("pk")
                  .values_list("pk", "threshold", "sustained_for", "min_samples", "severity"))
    migrate(("rollouts", "0003_review_of_agent_actions"))
    with connection.cursor() as cursor:  # a sample stored before the migration, without the late flag
        cursor.execute("INSERT INTO rollouts_signal "
                       "(plan_id, metric_id, ring, segment, observed_at, value, received_at) "
                       "VALUES (%s, %s, 0, '', now(), 812.5, now())", [live_plan.pk, latency.pk])
    migrate(CONTAINMENT)
    after = list(RollbackTrigger.objects.filter(plan=live_plan).order_by("pk")
                 .values_list("pk", "threshold", "sustained_for", "min_samples", "severity"))
    assert after == before
    trigger = RollbackTrigger.objects.filter(plan=live_plan, severity="critical").first()
    assert (trigger.breach_statistic, trigger.breach_share, trigger.flap_breaches, trigger.flap_windows) == (
        "share", 50, 3, 5)
    assert trigger.effective_no_data_after == 2 * trigger.sustained_for and trigger.effective_on_no_data == "pause"
    assert Signal.objects.get(plan=live_plan).late is False
