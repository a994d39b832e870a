"""Containment under real signals, on a controllable clock: late samples (event time), breach
statistics and flapping, sparse and missing data ("signals lost"), tags that cover only what
they expect, and silence that is not a rejection. Samples go through `ingest_signals` as the API
sends them; evaluation, approval timers and the executor are called as the worker calls them
(tests/rollouts/test_containment_workers.py runs the timing-sensitive parts in real workers).
"""

from __future__ import annotations

import random
from dataclasses import replace
from datetime import UTC, datetime, time, timedelta
from decimal import Decimal

import pytest
import time_machine
from django.db import connection
from django.test import Client

from approvals import notifications as outbox
from approvals import services as approval_services
from approvals.models import ApprovalRequest, Notice
from audit.models import AuditEvent
from core import clock
from governance.models import Workflow
from rollouts import evaluation as ev
from rollouts import evaluator, executors, notifications, plans, proposals, selectors, signals, tags
from rollouts.models import Metric, RolloutAction, RolloutPlan, Signal, SignalLoss
from tests.rollouts.conftest import metric, plan_spec

pytestmark = pytest.mark.django_db

NIGHT = datetime(2025, 3, 4, 23, 0, tzinfo=UTC)


@pytest.fixture(autouse=True)
def frozen():
    with time_machine.travel(NIGHT, tick=False) as traveller:
        yield traveller


def set_tier(workflow: Workflow, tier: int) -> None:
    workflow.autonomy_tier, workflow.off_hours_tier = tier, None
    workflow.business_start, workflow.business_end = time(0), time(23, 59, 59)
    workflow.save(update_fields=["autonomy_tier", "off_hours_tier", "business_start", "business_end"])


def fast_triggers(**overrides) -> list[dict]:
    """Latency and error rate triggers with a 30 s sustained-for window, as in the issue's replays."""
    base = {"operator": "gt", "sustained_for": timedelta(seconds=30), "min_samples": 3, "severity": "critical",
            **overrides}
    return [{"metric": metric("latency_p95_ms"), "threshold": Decimal("800"), **base},
            {"metric": metric("error_rate"), "threshold": Decimal("0.05"), **base}]


@pytest.fixture
def start_plan(make_plan, owner, release_manager, workflow):
    def start(tier: int, **trigger_overrides) -> RolloutPlan:
        set_tier(workflow, tier)
        rings = plan_spec()["rings"]
        rings[0]["min_soak"] = timedelta(hours=1)
        plan = make_plan(rings=rings, triggers=fast_triggers(**trigger_overrides))
        return plans.start_rollout(plan.pk, actor=release_manager)
    return start


def send(plan: RolloutPlan, **values: float) -> None:
    """One sample per metric, measured now (or `delay` seconds ago), received now."""
    delay = values.pop("delay", 0)
    ids = dict(Metric.objects.filter(slug__in=values).values_list("slug", "pk"))
    at = clock.now() - timedelta(seconds=delay)
    signals.ingest_signals(plan, [(ids[m], 0, "internal_team:support-ops", at, v) for m, v in values.items()])


def tick(frozen, plan: RolloutPlan, seconds: int, **values: float) -> None:
    """`seconds` of one sample a second per metric, evaluated after each arrival as the worker does."""
    for _ in range(seconds):
        frozen.shift(timedelta(seconds=1))
        send(plan, **values)
        evaluator.evaluate_plan(plan.pk)


def actions(plan: RolloutPlan, kind: str = "rollback") -> list[RolloutAction]:
    return list(RolloutAction.objects.filter(plan=plan, kind=kind).order_by("created_at", "id"))


def state_of(plan: RolloutPlan) -> str:
    return RolloutPlan.objects.values_list("state", flat=True).get(pk=plan.pk)


# -- 1. event time ----------------------------------------------------------------------------------

def test_samples_arriving_30_s_late_are_rolled_back_on_their_own_time_at_tier_1(start_plan, frozen):
    plan = start_plan(1)
    tick(frozen, plan, 40, latency_p95_ms=700, error_rate=0.01, delay=30)
    assert not actions(plan)
    first_breach = clock.now() + timedelta(seconds=1)
    for _ in range(40):  # the error rate rises; every sample still arrives 30 s after it was measured
        tick(frozen, plan, 1, latency_p95_ms=700, error_rate=0.08, delay=30)
        if actions(plan):
            break
    rollback = actions(plan)[0]
    assert rollback.handling == "execute"
    # Event time: the window ended at the newest sample's own time, 30 s before now.
    trigger = rollback.evidence["trigger"]
    assert datetime.fromisoformat(trigger["window_end"]) == clock.now() - timedelta(seconds=30)
    assert rollback.created_at - first_breach <= timedelta(seconds=30)  # within the sustained-for time of arrival
    executors.run(rollback.pk)
    assert state_of(plan) == "rolled_back"


def test_a_sample_too_late_to_count_is_recorded_and_counted_on_the_plan_page(start_plan, frozen, owner,
                                                                           agent_token):
    plan = start_plan(3)
    tick(frozen, plan, 10, latency_p95_ms=700, error_rate=0.01)
    measured = clock.now() - timedelta(minutes=10)  # the default allowed lateness is 5 min
    api = Client(headers={"Authorization": f"Bearer {agent_token}"})
    response = api.post("/api/v1/signals", {"workflow": "refund-agent", "samples": [
        {"metric": "error_rate", "value": 0.9, "observed_at": (measured + timedelta(seconds=s)).isoformat(),
         "segment": "internal_team:support-ops"} for s in range(3)]}, content_type="application/json")
    assert response.status_code == 200 and response.json()["late"] == 3
    assert Signal.objects.filter(plan=plan, late=True).count() == 3
    check = next(c for c in selectors.evaluate(plan, clock.now()).triggers if c.metric == "error_rate")
    assert check.status == "holding" and check.late == 3  # stored, never counted
    client = Client()
    client.force_login(owner)
    page = client.get(plan.get_absolute_url()).content.decode()
    assert "3 samples too late to count" in page


# -- 2. breach statistics and flapping ----------------------------------------------------------------

def flap(frozen, plan: RolloutPlan) -> timedelta:
    """The issue's flapping error rate after a healthy minute; how long it flapped until a rollback was proposed."""
    tick(frozen, plan, 60, latency_p95_ms=700, error_rate=0.01)
    began = clock.now()
    for second in range(300):
        tick(frozen, plan, 1, latency_p95_ms=700, error_rate=0.08 if second % 40 < 20 else 0.04)
        if actions(plan):
            break
    return clock.now() - began


def test_an_error_rate_flapping_20_s_above_and_20_s_below_is_caught_within_the_sustained_for_time(start_plan, frozen):
    plan = start_plan(2)
    assert flap(frozen, plan) <= timedelta(seconds=30 + 10)
    assert actions(plan)[0].handling == "override_window"


def test_with_every_sample_required_the_flapping_rule_catches_it(start_plan, frozen):
    plan = start_plan(2, breach_share=100)
    assert flap(frozen, plan) <= timedelta(minutes=3)
    rollback = actions(plan)[0]
    assert rollback.evidence["trigger"]["flapping"] and "flapping: " in rollback.reason


def test_noise_that_spikes_one_sample_in_six_is_never_rolled_back(start_plan, frozen):
    plan = start_plan(1)
    rng = random.Random(7)
    for second in range(300):
        tick(frozen, plan, 1, error_rate=0.01,
             latency_p95_ms=rng.uniform(820, 900) if second % 6 == 5 else rng.uniform(650, 790))
    assert not RolloutAction.objects.filter(plan=plan).exists()
    assert state_of(plan) == "active"


# -- 3. sparse and missing data ------------------------------------------------------------------------

def test_an_outage_right_after_a_breach_began_is_an_event_not_a_silent_pass(start_plan, frozen, mailoutbox,
                                                                           django_capture_on_commit_callbacks):
    plan = start_plan(3)
    tick(frozen, plan, 60, latency_p95_ms=700, error_rate=0.01, quality_score=0.9, cost_per_task=0.02)
    tick(frozen, plan, 5, latency_p95_ms=700, error_rate=0.09, quality_score=0.9, cost_per_task=0.02)
    last = clock.now()
    frozen.shift(timedelta(seconds=55))  # the signal stopped; within no_data_after (60 s) nothing is lost yet
    result = selectors.evaluate(plan, clock.now())
    assert not result.lost and result.next_check_at == last - timedelta(seconds=2) + timedelta(seconds=60)
    frozen.move_to(result.next_check_at + timedelta(milliseconds=1))  # the armed check fires
    with django_capture_on_commit_callbacks() as callbacks:
        evaluator.evaluate_plan(plan.pk)
    losses = {loss.metric.slug: loss for loss in SignalLoss.objects.filter(plan=plan)}
    assert set(losses) == {"latency_p95_ms", "error_rate"}
    assert all(loss.is_open and loss.on_no_data == "pause" for loss in losses.values())
    assert state_of(plan) == "paused"
    pause = RolloutAction.objects.get(plan=plan, kind="pause")
    assert (pause.origin, pause.handling) == ("trigger", "on_no_data")
    assert len(callbacks) >= 2  # one notice per loss, after the commit
    assert notifications.notify_signals_lost(losses["latency_p95_ms"].pk) == 1
    assert notifications.notify_signals_lost(losses["latency_p95_ms"].pk) == 0  # told once
    outbox.deliver(Notice.objects.get(event="signals_lost", subject_id=str(losses["latency_p95_ms"].pk)).pk)
    assert mailoutbox[0].to == ["olivia@example.com"]
    assert "signals lost" in mailoutbox[0].subject and "rollout paused" in mailoutbox[0].body
    events = list(AuditEvent.objects.filter(action__in=["rollout.signals_lost", "rollout.paused"])
                  .values_list("action", flat=True))
    assert events.count("rollout.signals_lost") == 2 and events.count("rollout.paused") == 1
    # The page and the decision say why; nothing expands while signals are lost.
    result = selectors.evaluate(plan, clock.now())
    assert result.decision.reason.startswith("signals lost")
    # Samples come back: the losses close, and criteria count only what arrived after the outage.
    tick(frozen, plan, 5, latency_p95_ms=700, error_rate=0.01, quality_score=0.9, cost_per_task=0.02)
    assert not SignalLoss.objects.filter(plan=plan, restored_at__isnull=True).exists()
    quality = next(c for c in selectors.evaluate(plan, clock.now()).criteria if c.metric == "quality_score")
    # sent since the signals were back, not the 65 before
    assert quality.status == "inconclusive" and quality.samples == 2
    assert AuditEvent.objects.filter(action="rollout.signals_restored").count() == 2


def test_signals_lost_freezes_expansion_and_cancels_a_pending_expansion(start_plan, frozen, owner):
    plan = start_plan(2, on_no_data="notify")
    frozen.shift(timedelta(hours=1))
    tick(frozen, plan, 20, latency_p95_ms=700, error_rate=0.01, quality_score=0.9, cost_per_task=0.02)
    expansion = RolloutAction.objects.get(plan=plan, kind="expand", state="pending_approval")
    frozen.shift(timedelta(seconds=70))
    evaluator.evaluate_plan(plan.pk)
    expansion.refresh_from_db()
    assert expansion.state == "cancelled" and expansion.result["cancelled"].startswith("signals lost")
    assert ApprovalRequest.objects.get(pk=expansion.approval_request_id).state == "cancelled"
    assert state_of(plan) == "active"  # on_no_data = notify: told, not paused
    assert SignalLoss.objects.filter(plan=plan, restored_at__isnull=True).count() == 2


def test_one_sample_a_minute_at_8_percent_asks_a_person_within_the_sustained_for_time(start_plan, frozen):
    plan = start_plan(1)
    for _ in range(3):
        frozen.shift(timedelta(minutes=1))
        send(plan, latency_p95_ms=700, error_rate=0.01)
        evaluator.evaluate_plan(plan.pk)
    assert state_of(plan) == "paused"  # 1 sample a minute is too few for a 30 s trigger: signals lost
    frozen.shift(timedelta(minutes=1))
    send(plan, latency_p95_ms=700, error_rate=0.08)
    evaluator.evaluate_plan(plan.pk)  # on arrival: within the sustained-for time
    rollback = actions(plan)[0]
    request = ApprovalRequest.objects.get(rollout_actions=rollback)
    assert (rollback.handling, request.mode) == ("override_window", "override_window")
    assert "a person is asked" in rollback.reason
    frozen.shift(timedelta(seconds=121))  # silence: the override window proceeds
    state, _ = proposals.reach_deadline(rollback.pk)
    assert state == "scheduled"
    executors.run(rollback.pk)
    assert state_of(plan) == "rolled_back"


# -- 4. tags cover only what they expect -----------------------------------------------------------------

def tag(workflow, release_manager, **fields):
    return tags.create_context_tag(actor=release_manager, workflow=workflow,
                                   ends_at=clock.now() + timedelta(hours=4),
                                   reason="the 23:00 database migration", **fields)


def test_an_80_percent_rise_in_a_15_percent_tagged_window_rolls_back_at_tier_1(start_plan, frozen, workflow,
                                                                               release_manager):
    plan = start_plan(1)
    tag(workflow, release_manager, kind="expected_latency_increase", expected_change_percent=Decimal("15"))
    tick(frozen, plan, 30, latency_p95_ms=880, error_rate=0.01)  # +10 % over 800: within the tag
    assert not actions(plan)
    tick(frozen, plan, 30, latency_p95_ms=1440, error_rate=0.01)  # +80 %
    rollback = actions(plan)[0]
    assert rollback.handling == "execute" and rollback.approval_request_id is None
    assert rollback.evidence["context_tag"]["effect"] == "exceeded"


def test_a_migration_window_alone_makes_an_error_rise_an_override_window_that_silence_lets_proceed(
        start_plan, frozen, workflow, release_manager):
    plan = start_plan(1)
    tag(workflow, release_manager, kind="migration_window")
    tick(frozen, plan, 35, latency_p95_ms=700, error_rate=0.08)
    rollback = actions(plan)[0]
    request = ApprovalRequest.objects.get(rollout_actions=rollback)
    assert request.mode == "override_window"
    assert rollback.evidence["context_tag"]["label"] == "migration_window: true"
    assert rollback.evidence["context_tag"]["effect"] == "override_window"
    frozen.shift(timedelta(seconds=121))
    assert proposals.reach_deadline(rollback.pk)[0] == "scheduled"
    executors.run(rollback.pk)
    assert state_of(plan) == "rolled_back"


# -- 5. silence is not a rejection ------------------------------------------------------------------------

@pytest.fixture
def one_minute_gate(workflow, admin_user):
    approval_services.define_policy(actor=admin_user, workflow=workflow, mode="gate",
                                    levels=[{"groups": ["containment_owner"], "timeout_seconds": 60}])


def test_an_expired_gate_starts_no_cool_down_and_the_breach_is_proposed_again_at_once(start_plan, frozen,
                                                                                      one_minute_gate):
    plan = start_plan(3)
    tick(frozen, plan, 35, latency_p95_ms=950, error_rate=0.01)
    first = actions(plan)[0]
    frozen.shift(timedelta(seconds=61))
    assert proposals.reach_deadline(first.pk)[0] == "cancelled"
    first.refresh_from_db()
    assert first.result["approval"] == "expired"
    assert state_of(plan) == "paused"  # silence leads to containment: nothing widens meanwhile
    pause = RolloutAction.objects.get(plan=plan, kind="pause")
    assert pause.handling == "on_silence" and pause.evidence == {"unanswered": first.pk}
    tick(frozen, plan, 1, latency_p95_ms=950, error_rate=0.01)
    again = actions(plan)
    assert len(again) == 2 and again[1].state == "pending_approval"


def test_a_trigger_may_only_ask_again_when_nobody_answers(start_plan, frozen, one_minute_gate):
    plan = start_plan(3, on_silence="ask")
    tick(frozen, plan, 35, latency_p95_ms=950, error_rate=0.01)
    frozen.shift(timedelta(seconds=61))
    assert proposals.reach_deadline(actions(plan)[0].pk)[0] == "cancelled"
    assert state_of(plan) == "active"
    tick(frozen, plan, 1, latency_p95_ms=950, error_rate=0.01)
    assert len(actions(plan)) == 2


def test_a_rejected_rollback_is_asked_again_at_once_only_if_the_breach_got_materially_worse(start_plan, frozen,
                                                                                           owner):
    plan = start_plan(3)
    tick(frozen, plan, 35, latency_p95_ms=950, error_rate=0.01)
    first = actions(plan)[0]
    approval_services.record_decision(first.approval_request_id, actor=owner, verdict="reject",
                                      justification="the cache is warming up")
    proposals.handle_approval_outcome(first.approval_request_id)
    tick(frozen, plan, 60, latency_p95_ms=1100, error_rate=0.01)  # worse, but by less than 25 % of 800
    assert len(actions(plan)) == 1
    tick(frozen, plan, 30, latency_p95_ms=1160, error_rate=0.01)  # 950 + 200: materially worse
    assert len(actions(plan)) == 2
    second = actions(plan)[1]
    approval_services.record_decision(second.approval_request_id, actor=owner, verdict="reject",
                                      justification="still the cache")
    proposals.handle_approval_outcome(second.approval_request_id)
    frozen.shift(timedelta(seconds=899))
    tick(frozen, plan, 1, latency_p95_ms=1160, error_rate=0.01)
    assert len(actions(plan)) == 2  # the same breach: not within the cool-down
    tick(frozen, plan, 2, latency_p95_ms=1160, error_rate=0.01)
    assert len(actions(plan)) == 3  # ROLLOUT_REPROPOSE_COOLDOWN_SECONDS (900) later it asks again


# -- the database's aggregates are the reference's ------------------------------------------------------

def test_the_windows_aggregated_in_postgresql_are_those_of_the_reference_on_the_raw_rows(start_plan, frozen,
                                                                                        monkeypatch):
    """selectors.trigger_samples (one GROUP BY over the flapping rule's windows) against
    evaluation.collect over the same rows: boundaries, late and out-of-order samples included."""
    plan = start_plan(1)
    rng = random.Random(3)
    for _ in range(200):
        frozen.shift(timedelta(seconds=rng.choice([0.5, 1, 1, 2, 5])))
        send(plan, latency_p95_ms=rng.uniform(600, 1100), delay=rng.choice([0, 0, 0, 3, 30, 400]))
    trigger = plan.triggers.get(metric__slug="latency_p95_ms")
    rule = selectors.as_evaluation_trigger(trigger)
    thresholds = (800.0, 920.0)
    for at in (clock.now(), clock.now() - timedelta(seconds=37), clock.now() + timedelta(minutes=2)):
        from_sql = selectors.trigger_samples(plan, trigger, rule, thresholds, at, trigger.allowed_lateness)
        rows = Signal.objects.filter(plan=plan, metric=trigger.metric, late=False).values_list(
            "observed_at", "value", "received_at")
        reference = ev.collect(rule, rows, now=at, thresholds=thresholds, watching_since=plan.started_at)
        assert from_sql.watermark == reference.watermark and from_sql.newest == reference.newest
        assert from_sql.received == reference.received
        for mine, theirs in zip(from_sql.windows, reference.windows, strict=True):
            assert (mine.start, mine.end, mine.count, mine.beyond) == (theirs.start, theirs.end, theirs.count,
                                                                       theirs.beyond)
            assert mine.total == pytest.approx(theirs.total)
        mine, theirs = (ev.evaluate_trigger(rule, from_sql),
                        ev.evaluate_trigger(rule, replace(reference, late=from_sql.late)))
        assert mine.value == pytest.approx(theirs.value) and replace(mine, value=0) == replace(theirs, value=0)
        with monkeypatch.context() as patched:  # SQLite (zero-setup) reads the rows and uses the reference
            patched.setattr(connection, "vendor", "sqlite")
            elsewhere = selectors.trigger_samples(plan, trigger, rule, thresholds, at, trigger.allowed_lateness)
        assert replace(ev.evaluate_trigger(rule, elsewhere), value=0) == replace(mine, value=0)
