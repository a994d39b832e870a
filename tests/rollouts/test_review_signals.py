"""Ringfence's own human-review signals (rollouts.review_signals): each computed right on a crafted
history of the queue and the reviews, too few decisions is no sample (never 0 %), a trigger on
`override_rate` proposing a rollback through the beat task (in process, then with a real worker and
beat), and the demo plan's criterion on `review_rejection_rate`."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from datetime import time as clock_time
from decimal import Decimal

import pytest
import time_machine
from django.conf import settings
from django.contrib.auth.models import User
from django.test import Client
from django.urls import reverse

from approvals import services as approval_services
from approvals.models import ApprovalRequest, Execution
from audit.models import AuditEvent
from configuration import demo as configuration_demo
from core import clock
from governance import demo as governance_demo
from governance.permissions import Role
from rollouts import demo, plans, review_signals, reviews, selectors, tasks
from rollouts.actions import new_action
from rollouts.models import ActionReview, RolloutAction, RolloutPlan, Signal
from tests import factories
from tests.rollouts.conftest import WORKER_ENV, metric
from tests.support.celery_processes import celery_processes

pytestmark = pytest.mark.django_db

T0 = datetime(2026, 3, 2, 10, 0, tzinfo=UTC)  # a Monday, inside business hours
WINDOW = timedelta(minutes=30)


@pytest.fixture
def approvers(workflow, approver, senior_approver):
    """alice and sam (fixtures) and bob: three people who may approve the workflow's requests."""
    bob = factories.make_user("bob", role=Role.APPROVER)
    factories.scope(bob, workflow)
    return {"alice": approver, "bob": bob, "sam": senior_approver}


def set_tier(workflow, tier: int) -> None:
    workflow.autonomy_tier, workflow.off_hours_tier = tier, None
    workflow.business_start, workflow.business_end = clock_time(0), clock_time(23, 59)
    workflow.save(update_fields=["autonomy_tier", "off_hours_tier", "business_start", "business_end"])


def ask(workflow, agent, mode: str = "override_window", n: int = 0) -> ApprovalRequest:
    return approval_services.create_request(workflow=workflow, kind="agent_action", action="issue_voucher",
                                            parameters={"order": f"A-{n}"}, requester=agent, mode=mode,
                                            idempotency_key=f"k-{mode}-{n}-{clock.now().timestamp()}")


def decide(req: ApprovalRequest, who, verdict: str) -> ApprovalRequest:
    extra = {} if verdict == "approve" else {"justification": "not needed", "reason": "noise"
                                             if verdict == "override" else ""}
    return approval_services.record_decision(req.pk, actor=who, verdict=verdict, **extra)


def decided_history(workflow, agent, approvers, verdicts: list[str], *, start: datetime) -> list[ApprovalRequest]:
    """Requests all asked at `start`; the k-th (from 1) decided `10 k` seconds later by alice."""
    with time_machine.travel(start, tick=False) as traveller:
        asked = [ask(workflow, agent, "gate" if v == "reject" else "override_window", n)
                 for n, v in enumerate(verdicts)]
        for k, (req, verdict) in enumerate(zip(asked, verdicts, strict=True), start=1):
            traveller.move_to(start + timedelta(seconds=10 * k))
            decide(req, approvers["alice"], verdict)
    return asked


# -- each signal on a crafted history ---------------------------------------------------------------

def test_override_rate_latency_p90_and_load_are_computed_from_the_queue(workflow, agent, approvers):
    start = T0 + timedelta(minutes=5)
    # Before the window: an override that must not count.
    decided_history(workflow, agent, approvers, ["override"], start=T0 - timedelta(hours=2))
    # In the window: 11 decided by people, 3 of them overridden, latencies 10 s … 110 s.
    verdicts = ["approve", "override", "approve", "reject", "approve", "override", "approve", "approve",
                "override", "approve", "approve"]
    decided_history(workflow, agent, approvers, verdicts, start=start)
    with time_machine.travel(start + timedelta(minutes=3), tick=False):
        # Not decided by a person: a cancelled request; and six still pending (the load).
        cancelled = ask(workflow, agent, n=100)
        approval_services.cancel_request(cancelled.pk, actor=agent, reason="asked twice")
        for n in range(6):
            ask(workflow, agent, n=200 + n)
    at = start + timedelta(minutes=10)

    override = review_signals.read(workflow, "override_rate", window=WINDOW, at=at)
    latency = review_signals.read(workflow, "approval_latency_p90", window=WINDOW, at=at)
    load = review_signals.read(workflow, "review_load", window=WINDOW, at=at)

    assert (override.value, override.decisions) == (3 / 11, 11)
    assert (latency.value, latency.decisions) == (100.0, 11)  # the 10th of 11 latencies, exactly
    assert (load.value, load.decisions) == (6 / 3, 6)  # six pending, three eligible approvers
    assert override.note == "3 of 11 decided requests overridden"


def test_the_p90_interpolates_between_ranks_as_percentile_cont_does():
    assert review_signals.percentile([10.0, 20.0, 30.0, 40.0], 0.9) == pytest.approx(37.0)
    assert review_signals.percentile([5.0], 0.9) == 5.0


def test_review_rejection_and_false_positive_rates_are_computed_from_the_reviews(workflow, agent, owner, live_plan):
    """Ten reviews judged in the window: 4 of agent actions (1 wrong), 5 of automatic rollbacks and
    fallbacks (2 wrong), 1 of an automatic expansion (correct); one more before the window and one
    still pending, neither counted."""
    def review_of(kind: str | None) -> ActionReview:
        if kind is None:
            execution = Execution.objects.create(workflow=workflow, action="issue_voucher", parameters_digest="d" * 64,
                                                 service_account=agent, granted_at=clock.now(),
                                                 expires_at=clock.now() + timedelta(hours=1))
            return ActionReview.objects.create(execution=execution, workflow=workflow, created_at=clock.now())
        action = new_action(live_plan, kind, state=RolloutAction.State.SUCCEEDED, origin=RolloutAction.Origin.TRIGGER)
        return ActionReview.objects.create(action=action, workflow=workflow, created_at=clock.now())

    history = [(None, "false_positive"), (None, "correct"), (None, "correct"), (None, "correct"),
               ("rollback", "false_positive"), ("fallback", "false_positive"), ("rollback", "correct"),
               ("rollback", "correct"), ("fallback", "correct"), ("expand", "correct")]
    with time_machine.travel(T0, tick=False) as traveller:
        old = review_of("rollback")
        reviews.review_action(old.pk, actor=owner, verdict="false_positive", reason="noise")
        review_of("rollback")  # never judged
        for minute, (kind, verdict) in enumerate(history, start=40):
            traveller.move_to(T0 + timedelta(minutes=minute))
            review = review_of(kind)
            reviews.review_action(review.pk, actor=owner, verdict=verdict,
                                  reason="noise" if verdict == "false_positive" else "")
    at = T0 + timedelta(minutes=60)

    rejection = review_signals.read(workflow, "review_rejection_rate", window=WINDOW, at=at)
    false_positive = review_signals.read(workflow, "false_positive_rate", window=WINDOW, at=at)

    assert (rejection.value, rejection.decisions) == (0.3, 10)
    assert (false_positive.value, false_positive.decisions) == (0.4, 5)
    assert false_positive.note == "2 of 5 judged wrong"


# -- too few decisions ----------------------------------------------------------------------------

def review_plan(make_plan, owner, release_manager, *, criteria=(), triggers=()) -> RolloutPlan:
    plan = make_plan(criteria=[*make_plan_criteria(), *criteria], triggers=[*make_plan_triggers(), *triggers])
    return plans.start_rollout(plan.pk, actor=release_manager)


def make_plan_criteria() -> list[dict]:
    return [{"metric": metric("cost_per_task"), "operator": "lte", "threshold": Decimal("0.05"),
             "window": timedelta(minutes=10), "min_samples": 5}]


def make_plan_triggers() -> list[dict]:
    return [{"metric": metric("latency_p95_ms"), "operator": "gt", "threshold": Decimal("800"),
             "sustained_for": timedelta(minutes=2), "min_samples": 3, "severity": "critical",
             "no_data_after": timedelta(hours=6), "on_no_data": "notify"}]


def test_too_few_decisions_is_no_sample_and_the_criterion_stays_inconclusive(
        workflow, agent, approvers, make_plan, owner, release_manager):
    assert settings.ROLLOUT_REVIEW_MIN_DECISIONS == 5
    with time_machine.travel(T0, tick=False):
        plan = review_plan(make_plan, owner, release_manager, criteria=[
            {"metric": metric("override_rate"), "operator": "lte", "threshold": Decimal("0.2"),
             "window": timedelta(minutes=15), "min_samples": 1}])
    decided_history(workflow, agent, approvers, ["approve"] * 4, start=T0 + timedelta(minutes=1))
    at = T0 + timedelta(minutes=5)

    with time_machine.travel(at, tick=False):
        sample = review_signals.sample_plan(plan)
        check = next(c for c in selectors.evaluate(plan, clock.now()).criteria if c.metric == "override_rate")

    assert [(r.metric, r.value, r.note) for r in sample.readings] == [
        ("override_rate", None, "4 decided requests in the window, 5 needed")]
    assert sample.ingested is None and not Signal.objects.filter(plan=plan).exists()
    assert check.status == "inconclusive" and check.samples == 0

    decided_history(workflow, agent, approvers, ["approve"], start=at)  # the fifth decision
    with time_machine.travel(at + timedelta(minutes=1), tick=False):
        sample = review_signals.sample_plan(plan)
        check = next(c for c in selectors.evaluate(plan, clock.now()).criteria if c.metric == "override_rate")
    stored = Signal.objects.get(plan=plan)
    assert (stored.metric.slug, stored.value, stored.ring, stored.segment) == (
        "override_rate", 0.0, 0, "internal_team:support-ops")
    assert check.status == "met" and check.value == 0.0


def test_each_rule_reads_its_own_window_and_the_shortest_wins_for_a_shared_metric(
        workflow, make_plan, owner, release_manager):
    plan = review_plan(make_plan, owner, release_manager, criteria=[
        {"metric": metric("review_rejection_rate"), "operator": "lte", "threshold": Decimal("0.2"),
         "window": timedelta(minutes=45), "min_samples": 5},
        {"metric": metric("override_rate"), "operator": "lte", "threshold": Decimal("0.3"),
         "window": timedelta(minutes=30), "min_samples": 5}],
        triggers=[{"metric": metric("override_rate"), "operator": "gt", "threshold": Decimal("0.5"),
                   "sustained_for": timedelta(minutes=10), "min_samples": 3, "severity": "critical"}])
    windows = {slug: window for slug, (_, window) in review_signals.windows_of(plan).items()}
    assert windows == {"review_rejection_rate": timedelta(minutes=45), "override_rate": timedelta(minutes=10)}


# -- a trigger on override_rate proposes a rollback ------------------------------------------------

OVERRIDE_TRIGGER = {"operator": "gt", "threshold": Decimal("0.5"), "sustained_for": timedelta(minutes=10),
                    "min_samples": 3, "severity": "critical", "no_data_after": timedelta(hours=6),
                    "on_no_data": "notify"}


def test_a_trigger_on_override_rate_proposes_a_rollback_through_the_beat_task(
        workflow, agent, approvers, make_plan, owner, release_manager, django_capture_on_commit_callbacks):
    set_tier(workflow, 2)
    with time_machine.travel(T0, tick=False):
        plan = review_plan(make_plan, owner, release_manager,
                           triggers=[{"metric": metric("override_rate"), **OVERRIDE_TRIGGER}])
    # People overrode 4 of the 6 agent actions they decided: the agent's judgement has drifted.
    decided_history(workflow, agent, approvers, ["override", "approve", "override", "override", "approve",
                                                 "override"], start=T0 + timedelta(minutes=1))
    stored = []
    with django_capture_on_commit_callbacks() as callbacks:
        for minute in (3, 4, 5):
            with time_machine.travel(T0 + timedelta(minutes=minute), tick=False):
                stored.append(tasks.sample_review_signals())
    assert stored == [1, 1, 1]
    assert callbacks, "the batches scheduled their plan's (debounced) evaluation"
    assert list(plan.signals.values_list("value", flat=True).order_by("observed_at")) == [4 / 6] * 3

    with time_machine.travel(T0 + timedelta(minutes=5, seconds=2), tick=False):
        outcome = tasks.evaluate_plan(plan.pk)

    assert outcome == "rollback"
    action = RolloutAction.objects.get(plan=plan, kind="rollback")
    assert (action.state, action.origin, action.handling) == ("pending_approval", "trigger", "override_window")
    assert action.evidence["trigger"]["metric"] == "override_rate"
    assert action.evidence["trigger"]["value"] == pytest.approx(4 / 6)
    assert action.approval_request.kind == "rollback" and action.approval_request.state == "pending"
    assert AuditEvent.objects.filter(action="rollout.action_proposed").exists()


@pytest.mark.django_db(transaction=True)
def test_with_a_real_worker_and_beat_an_override_rate_trigger_proposes_a_rollback(
        workflow, agent, approvers, make_plan, owner, release_manager):
    """No pusher, no in-process call: beat samples the queue, the worker evaluates and proposes."""
    set_tier(workflow, 2)
    plan = review_plan(make_plan, owner, release_manager, triggers=[
        {"metric": metric("override_rate"), **OVERRIDE_TRIGGER, "sustained_for": timedelta(minutes=5)}])
    now = clock.now()
    decided_history(workflow, agent, approvers, ["override", "override", "approve", "override", "override"],
                    start=now - timedelta(seconds=60))
    env = {**WORKER_ENV, "ROLLOUT_REVIEW_SIGNALS_SECONDS": "1",
           "ROLLOUT_WEBHOOK_SECRET": settings.ROLLOUT_WEBHOOK_SECRET}
    with celery_processes(sweep_seconds=0.5, env=env) as celery:
        action = celery.wait_for(lambda: RolloutAction.objects.filter(plan=plan, kind="rollback").first(), 30,
                                 "the review signals fired the override_rate trigger")
    assert action.origin == "trigger" and action.evidence["trigger"]["metric"] == "override_rate"
    assert action.evidence["trigger"]["value"] == pytest.approx(0.8)
    samples = list(Signal.objects.filter(plan=plan, metric__slug="override_rate").order_by("received_at")
                   .values_list("received_at", flat=True))
    assert len(samples) >= 3
    assert action.created_at >= samples[2], "the trigger waited for its minimum of three samples"


# -- the demo --------------------------------------------------------------------------------------

def test_the_demo_migration_expands_only_while_the_reviewers_agree():
    governance_demo.seed()
    configuration_demo.seed()
    demo.seed()
    plan = RolloutPlan.objects.select_related("workflow").get(release_version="billing-v5-migration")
    first_run = RolloutPlan.objects.get(release_version="billing-v5-migration-r1")
    olivia = plan.workflow.containment.filter(duty="rollback", position="primary").get().user
    criterion = plan.criteria.get(metric__slug="review_rejection_rate")
    assert (criterion.operator, criterion.threshold, criterion.window) == ("lte", Decimal("0.2"), WINDOW)
    start = clock.now()

    def reviewers_check():
        return next(c for c in selectors.evaluate(plan, clock.now()).criteria if c.metric == "review_rejection_rate")

    with time_machine.travel(start + timedelta(minutes=1), tick=False):
        nothing = review_signals.sample_plan(plan)
        assert nothing.ingested is None and nothing.readings[0].value is None
        assert reviewers_check().status == "inconclusive"
    # The owner judges five autonomous actions of the workflow: one was a false positive.
    with time_machine.travel(start + timedelta(minutes=2), tick=False):
        for n in range(5):
            action = new_action(first_run, "rollback" if n else "fallback", state=RolloutAction.State.SUCCEEDED,
                                origin=RolloutAction.Origin.TRIGGER)
            review = ActionReview.objects.create(action=action, workflow=plan.workflow, created_at=clock.now())
            reviews.review_action(review.pk, actor=olivia, verdict="false_positive" if n == 0 else "correct",
                                  reason="noise" if n == 0 else "")
    for minute in range(3, 8):  # five beats: the criterion's minimum samples
        with time_machine.travel(start + timedelta(minutes=minute), tick=False):
            review_signals.sample_plan(plan)
    with time_machine.travel(start + timedelta(minutes=7), tick=False):
        check = reviewers_check()
    assert (check.status, check.value, check.samples) == ("met", 0.2, 5)

    # The manager reads them on the plan's dashboard like any other signal.
    client = Client()
    client.force_login(User.objects.get(username="maya"))
    page = client.get(reverse("rollouts:dashboard_plan", args=[plan.pk]))
    assert page.status_code == 200
    text = page.content.decode()
    assert "Review rejection rate against its thresholds" in text
    assert "Computed by Ringfence from the workflow&#x27;s approval queue and reviews" in text
