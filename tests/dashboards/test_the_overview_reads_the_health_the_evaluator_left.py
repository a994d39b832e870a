"""The evaluator leaves each live plan's health in the cache when it evaluates, so the first
dashboard reader after it does not evaluate every live rollout again; a reader who finds no health
there still evaluates the plan and shows the same verdict."""

from __future__ import annotations

from datetime import timedelta

import pytest
import time_machine
from django.core.cache import cache
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone

from governance import services as governance
from governance.models import ContainmentAssignment
from governance.permissions import Role
from rollouts import containment, evaluator, health, plans
from rollouts.models import RolloutPlan
from tests import factories
from tests.dashboards.conftest import add, table
from tests.rollouts.conftest import plan_spec

pytestmark = pytest.mark.django_db

DASHBOARD = reverse("rollouts:dashboard")
HEALTHY = "healthy: every trigger holds, every criterion met"


@pytest.fixture
def now():
    at = timezone.now().replace(microsecond=0)
    with time_machine.travel(at, tick=False):
        yield at


@pytest.fixture
def live_plans(now, manager, admin_user, containment_owner) -> list[RolloutPlan]:
    """Three live rollouts in the manager's scope, each 5 minutes into its first ring's 10-minute
    soak with healthy signals: evaluating them calls for no action."""
    rhea = factories.make_user("rhea", role=Role.RELEASE_MANAGER)
    started = now - timedelta(minutes=5)
    live = []
    for i in range(3):
        workflow = factories.make_workflow(f"agent-{i}", actor=admin_user)
        factories.scope(rhea, workflow)
        factories.scope(manager, workflow)
        for duty in ContainmentAssignment.Duty.values:
            governance.assign_containment(workflow.pk, actor=admin_user, user=containment_owner, duty=duty)
        with time_machine.travel(started, tick=False):
            plan = plans.start_rollout(plans.create_plan(actor=rhea, workflow=workflow, **plan_spec()).pk, actor=rhea)
        first = started + timedelta(seconds=30)  # every 30 s up to now, none older than the allowed 5 min lateness
        add(plan, "quality_score", first, [0.9] * 9)
        add(plan, "cost_per_task", first, [0.03] * 9)
        add(plan, "error_rate", first, [0.01] * 9)
        add(plan, "latency_p95_ms", first, [700.0] * 9)
        live.append(RolloutPlan.objects.get(pk=plan.pk))
    return live


def forget_health(plans_: list[RolloutPlan]) -> None:
    """As when HEALTH_SECONDS ran out since anyone evaluated them."""
    cache.delete_many([health.key(plan) for plan in plans_])


def healths(page: str) -> dict[str, str]:
    return {row[0]: row[5] for row in table(page, "Exposure of live rollouts")}


def test_after_an_evaluation_the_overview_reads_every_live_plans_health_from_the_cache(
        client, manager, live_plans, django_assert_max_num_queries):
    client.force_login(manager)
    expected = {plan.workflow.slug: HEALTHY for plan in live_plans}
    assert healths(client.get(DASHBOARD).content.decode()) == expected  # the reader's own caches warmed too
    with CaptureQueriesContext(connection) as warm:
        client.get(DASHBOARD)

    forget_health(live_plans)
    with CaptureQueriesContext(connection) as cold:
        page = client.get(DASHBOARD).content.decode()
    assert healths(page) == expected
    assert len(cold) >= len(warm) + 3 * len(live_plans), "a cold reader evaluates every live plan"

    forget_health(live_plans)
    for plan in live_plans:
        evaluator.evaluate_plan(plan.pk)
    with django_assert_max_num_queries(len(warm)):
        page = client.get(DASHBOARD).content.decode()
    assert healths(page) == expected


def test_a_change_to_the_plan_after_the_evaluation_is_not_hidden_by_its_cached_health(
        client, manager, live_plans, containment_owner):
    client.force_login(manager)
    for plan in live_plans:
        evaluator.evaluate_plan(plan.pk)
    paused = live_plans[0]
    containment.pause_rollout(paused.pk, actor=containment_owner, reason="partner asked for a pause")
    page = client.get(DASHBOARD).content.decode()
    assert healths(page)[paused.workflow.slug] == "paused"
