"""A real Prometheus (Debian's package) scraping an exporter the test runs every second: a rollout rolls
back and expands on PromQL queries with no pusher written, and Prometheus stopped mid-rollout leaves the
criteria inconclusive, so a person is asked and no ring opens.

The test's clock (time_machine) starts at the real time and moves in steps of the pull interval; the
queries ask Prometheus for that moment (`time=`), and its long look-back answers with the latest scrape.
"""

from __future__ import annotations

from datetime import UTC, datetime, time, timedelta

import pytest
import time_machine

from approvals.models import Notice
from rollouts import evaluator, plans, providers
from rollouts.models import Metric, MetricFetch, RolloutAction, RolloutPlan, Signal
from tests.rollouts.conftest import plan_spec
from tests.support.prometheus import prometheus_server

pytestmark = [pytest.mark.django_db, pytest.mark.timeout(180)]

QUERIES = {
    "latency_p95_ms": 'max(rf_latency_ms{segment="{{ segment }}", workflow="{{ workflow }}"})',
    "error_rate": 'max(rf_error_rate{segment="{{ segment }}"})',
    "quality_score": 'min(rf_quality{segment="{{ segment }}"})',
    "cost_per_task": 'avg(rf_cost{segment="{{ segment }}"})',
}
STEP = 15  # seconds: the providers' interval, and the clock's step


@pytest.fixture
def prom(settings):
    settings.WEBHOOK_ALLOWED_NETWORKS = ["127.0.0.0/8"]  # a Prometheus on this host is a private address
    with prometheus_server() as server:
        yield server


def exporter(prom, **values: float) -> None:
    """Set the exporter's gauges for the first ring's segment and wait until Prometheus has scraped them."""
    names = {"latency_p95_ms": "rf_latency_ms", "error_rate": "rf_error_rate", "quality_score": "rf_quality",
             "cost_per_task": "rf_cost"}
    for slug, value in values.items():
        labels = {"segment": "support-ops", "workflow": "refund-agent"} if slug == "latency_p95_ms" else {
            "segment": "support-ops"}
        prom.set(names[slug], value, **labels)
    for slug, value in values.items():
        query = QUERIES[slug].replace("{{ segment }}", "support-ops").replace("{{ workflow }}", "refund-agent")
        prom.wait_for(query, value)


def pulled_by(prom, admin_user) -> None:
    for slug, query in QUERIES.items():
        providers.set_metric_provider(actor=admin_user, slug=slug, provider={
            "kind": "prometheus", "url": prom.url, "query": query, "interval_seconds": STEP, "timeout_seconds": 2,
            "max_failures": 3})


def set_tier(plan: RolloutPlan, tier: int) -> None:
    workflow = plan.workflow
    workflow.autonomy_tier, workflow.off_hours_tier = tier, None
    workflow.business_start, workflow.business_end = time(0), time(23, 59)
    workflow.save(update_fields=["autonomy_tier", "off_hours_tier", "business_start", "business_end"])


def short_plan(make_plan, release_manager) -> RolloutPlan:
    """Ring 0 soaks one minute; criteria over one minute; triggers sustained for one minute."""
    spec = plan_spec()
    for ring in spec["rings"]:
        ring["min_soak"] = timedelta(minutes=1)
    spec["rings"][1]["approval_point"] = False
    for criterion in spec["criteria"]:
        criterion.update(window=timedelta(minutes=1), min_samples=4)
    for trigger in spec["triggers"]:
        trigger.update(sustained_for=timedelta(minutes=1), min_samples=2, no_data_after=timedelta(minutes=10))
    plan = make_plan(rings=spec["rings"], criteria=spec["criteria"], triggers=spec["triggers"])
    return plans.start_rollout(plan.pk, actor=release_manager)


def step(traveller) -> list[MetricFetch]:
    """One beat sweep at the clock's moment, then the evaluation its samples schedule."""
    fetches = providers.pull_due()
    for plan_id in {f.plan_id for f in fetches}:
        evaluator.evaluate_plan(plan_id)
    traveller.shift(STEP)
    return fetches


def statuses(fetches: list[MetricFetch]) -> dict[str, str]:
    return {f.metric.slug: f.status for f in fetches}


def test_a_promql_trigger_rolls_back_when_the_exporter_value_rises(prom, admin_user, owner, make_plan,
                                                                   release_manager):
    pulled_by(prom, admin_user)
    exporter(prom, latency_p95_ms=420, error_rate=0.01, quality_score=0.9, cost_per_task=0.03)
    with time_machine.travel(datetime.now(UTC), tick=False) as traveller:
        plan = plans.start_rollout(make_plan().pk, actor=release_manager)
        for _ in range(4):
            assert statuses(step(traveller)) == dict.fromkeys(QUERIES, "ok")
        assert not plan.actions.filter(kind="rollback").exists()
        latency = Metric.objects.get(slug="latency_p95_ms")
        assert set(Signal.objects.filter(plan=plan, metric=latency).values_list("value", flat=True)) == {420.0}

        exporter(prom, latency_p95_ms=1450)  # the release is slow now: nobody pushes anything
        for _ in range(8):
            step(traveller)
            if plan.actions.filter(kind="rollback").exists():
                break

    rollback = plan.actions.get(kind="rollback")
    assert rollback.origin == "trigger" and rollback.trigger.metric.slug == "latency_p95_ms"
    assert rollback.handling == "override_window" and rollback.state == "pending_approval"  # tier 2
    assert rollback.evidence["trigger"]["value"] > 800
    assert set(Signal.objects.filter(plan=plan, metric=latency).values_list("value", flat=True)) == {420.0, 1450.0}
    fetch = MetricFetch.objects.filter(plan=plan, metric=latency).first()
    assert (fetch.status, fetch.value, fetch.segment) == ("ok", 1450.0, "internal_team:support-ops")


def test_a_rollout_expands_on_promql_criteria_with_no_pusher(prom, admin_user, owner, make_plan, release_manager):
    pulled_by(prom, admin_user)
    exporter(prom, latency_p95_ms=420, error_rate=0.01, quality_score=0.92, cost_per_task=0.03)
    with time_machine.travel(datetime.now(UTC), tick=False) as traveller:
        plan = short_plan(make_plan, release_manager)
        set_tier(plan, 1)
        for _ in range(8):
            step(traveller)
            plan.refresh_from_db()
            if plan.current_ring == 1:
                break
    assert plan.current_ring == 1
    expand = plan.actions.get(kind="expand")
    assert (expand.origin, expand.handling, expand.state) == ("criteria", "execute", "succeeded")


def test_prometheus_stopped_mid_rollout_is_inconclusive_so_a_person_is_asked_and_no_ring_opens(
        prom, admin_user, owner, make_plan, release_manager):
    pulled_by(prom, admin_user)
    exporter(prom, latency_p95_ms=420, error_rate=0.01, quality_score=0.92, cost_per_task=0.03)
    with time_machine.travel(datetime.now(UTC), tick=False) as traveller:
        plan = short_plan(make_plan, release_manager)
        set_tier(plan, 1)  # healthy criteria would open the next ring with nobody asked
        assert statuses(step(traveller)) == dict.fromkeys(QUERIES, "ok")
        assert statuses(step(traveller)) == dict.fromkeys(QUERIES, "ok")

        prom.stop()
        failed = [step(traveller) for _ in range(5)]  # soak complete after four steps

    assert all(statuses(fetches) == dict.fromkeys(QUERIES, "error") for fetches in failed)
    assert "could not connect" in failed[0][0].error
    plan.refresh_from_db()
    assert plan.current_ring == 0 and plan.state == "active"
    expand = plan.actions.get(kind="expand")
    assert expand.handling == "gate" and expand.state == RolloutAction.State.PENDING_APPROVAL
    assert expand.approval_request.state == "pending"
    assert "inconclusive, a person decides" in expand.reason
    # No sample came from the failed pulls, and after three in a row the owners were told, once per metric.
    assert Signal.objects.filter(plan=plan).count() == 2 * len(QUERIES)
    told = Notice.objects.filter(event="signals_lost", subject_type="rollouts.metricfetch")
    assert sorted(n.data["metric"] for n in told) == sorted(QUERIES)
    assert all(n.recipients == [owner.email] for n in told)

