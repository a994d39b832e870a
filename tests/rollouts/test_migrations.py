"""rollouts 0002: the approval request id of an action becomes a foreign key and keeps its value;
an id that names no request is kept in the action's result instead of breaking the migration."""

from __future__ import annotations

import pytest
from django.db import IntegrityError, connection
from django.db.migrations.executor import MigrationExecutor

from rollouts import services
from rollouts.models import RolloutAction

pytestmark = pytest.mark.django_db(transaction=True)

BEFORE, AFTER = ("rollouts", "0001_initial"), ("rollouts", "0002_rolloutaction_approval_request_fk")


def migrate(target: tuple[str, str]) -> None:
    executor = MigrationExecutor(connection)
    executor.loader.build_graph()
    executor.migrate([target])


def test_approval_request_ids_survive_and_an_orphan_id_moves_to_the_result(live_plan, owner):
    gated = services.propose_action(live_plan.pk, kind="rollback", handling="gate", tier=3, origin="trigger",
                                    evidence={}, reason="p95 above 800 ms").action
    paused = services.pause_rollout(live_plan.pk, actor=owner, reason="quality dip")
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
