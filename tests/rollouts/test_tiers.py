"""Autonomy tiers, context tags and inconclusive data: what evaluation does with a live plan.

In-process: the evaluation, the approval outcome handler and the executor are called the way the
worker calls them (tests/rollouts/test_end_to_end.py runs them in real worker processes).
"""

from __future__ import annotations

from datetime import UTC, datetime, time, timedelta
from decimal import Decimal

import pytest
import time_machine
from django.core.cache import cache

from approvals import notifications as outbox
from approvals import services as approval_services
from approvals.models import ApprovalRequest, Notice
from audit.models import AuditEvent
from core import clock
from governance.models import Workflow
from rollouts import containment, evaluator, executors, messages, notifications, plans, proposals, signals, tags, tasks
from rollouts.models import ActionReview, Metric, RolloutAction, RolloutPlan

pytestmark = pytest.mark.django_db

# Tuesday 4 March 2025, 23:32 UTC: the seeds' migration night (the workflow's business hours are 9–17 UTC).
NIGHT = datetime(2025, 3, 4, 23, 32, tzinfo=UTC)
DAY = datetime(2025, 3, 4, 10, 0, tzinfo=UTC)


@pytest.fixture(autouse=True)
def frozen():
    with time_machine.travel(NIGHT, tick=False) as traveller:
        yield traveller


def set_tier(workflow: Workflow, tier: int, off_hours: int | None = None) -> None:
    workflow.autonomy_tier, workflow.off_hours_tier = tier, off_hours
    workflow.business_start, workflow.business_end = time(9), time(17)
    workflow.save(update_fields=["autonomy_tier", "off_hours_tier", "business_start", "business_end"])


def add(plan: RolloutPlan, metric: str, *values: float, every: int = 10) -> None:
    """Samples ending now, `every` seconds apart, from ring 0."""
    now = clock.now()
    metric_id = Metric.objects.get(slug=metric).pk
    rows = [(metric_id, 0, "internal_team:support-ops", now - timedelta(seconds=every * (len(values) - 1 - i)), v)
            for i, v in enumerate(values)]
    signals.ingest_signals(plan, rows)


def healthy(plan: RolloutPlan) -> None:
    add(plan, "quality_score", *[0.9] * 6)
    add(plan, "cost_per_task", *[0.03] * 6)
    add(plan, "error_rate", *[0.01] * 6)


SPIKE = (808, 861, 890, 909)  # the seeds' 15 % latency rise over a 790 ms baseline; the trigger says > 800


def open_action(plan: RolloutPlan) -> RolloutAction:
    return RolloutAction.objects.get(plan=plan, state__in=RolloutAction.OPEN_STATES)


def approval_of(action: RolloutAction) -> ApprovalRequest:
    return ApprovalRequest.objects.get(rollout_actions=action)


def breached(workflow: Workflow, plan: RolloutPlan, tier: int) -> RolloutAction:
    """The seeds' latency rise on a workflow at `tier`, evaluated once: the proposal it made."""
    set_tier(workflow, tier)
    add(plan, "latency_p95_ms", *SPIKE)
    evaluator.evaluate_plan(plan.pk)
    return open_action(plan)


def test_tier_1_executes_at_once_and_files_a_post_facto_review(workflow, live_plan):
    set_tier(workflow, 1)
    add(live_plan, "latency_p95_ms", *SPIKE)
    decision = evaluator.evaluate_plan(live_plan.pk)
    assert (decision.action, decision.handling) == ("rollback", "execute")
    action = open_action(live_plan)
    assert action.state == "scheduled" and action.approval_request_id is None and action.tier == 1
    assert ActionReview.objects.get(action=action).is_pending
    executors.run(action.pk)
    live_plan.refresh_from_db()
    assert live_plan.state == "rolled_back"
    event = AuditEvent.objects.get(action="rollout.action_proposed")
    assert event.actor_label == "system:rollouts"
    assert event.data["evidence"]["trigger"]["rule"] == "latency_p95_ms > 800 sustained for 2 min"
    assert event.data["evidence"]["trigger"]["samples"] == 4


def test_tier_2_opens_an_override_window_that_proceeds_in_silence(workflow, live_plan, frozen):
    action = breached(workflow, live_plan, 2)
    request = approval_of(action)
    assert (action.state, request.mode, request.kind) == ("pending_approval", "override_window", "rollback")
    assert request.subject_type == "rollouts.rolloutaction" and request.subject_id == str(action.pk)
    assert request.evidence["trigger"]["metric"] == "latency_p95_ms"
    frozen.shift(timedelta(seconds=121))
    assert approval_services.handle_due(request.pk) == "auto_approved"
    proposals.handle_approval_outcome(request.pk)
    action.refresh_from_db()
    assert action.state == "scheduled"
    assert ActionReview.objects.filter(action=action).exists()  # nobody looked before it ran
    executors.run(action.pk)
    live_plan.refresh_from_db()
    assert live_plan.state == "rolled_back"


def test_tier_2_override_cancels_the_rollback(workflow, live_plan, owner):
    action = breached(workflow, live_plan, 2)
    approval_services.record_decision(action.approval_request_id, actor=owner, verdict="override",
                                      justification="the migration changes query plans", reason="known_change")
    proposals.handle_approval_outcome(action.approval_request_id)
    proposals.handle_approval_outcome(action.approval_request_id)  # handlers may run twice
    action.refresh_from_db()
    live_plan.refresh_from_db()
    assert action.state == "cancelled" and live_plan.state == "active"
    assert AuditEvent.objects.filter(action="rollout.action_cancelled").count() == 1
    # The same finding does not ask again during the cool-down.
    add(live_plan, "latency_p95_ms", 950, 960, 970)
    assert evaluator.evaluate_plan(live_plan.pk).action == "rollback"
    assert not RolloutAction.objects.filter(state__in=RolloutAction.OPEN_STATES).exists()


def test_tier_2_approve_proceeds_at_once(workflow, live_plan, owner):
    action = breached(workflow, live_plan, 2)
    approval_services.record_decision(action.approval_request_id, actor=owner, verdict="approve")
    proposals.handle_approval_outcome(action.approval_request_id)
    action.refresh_from_db()
    assert action.state == "scheduled" and not ActionReview.objects.exists()


def test_tier_3_waits_for_an_approval_in_gate_mode(workflow, live_plan, owner):
    action = breached(workflow, live_plan, 3)
    assert approval_of(action).mode == "gate"
    approval_services.record_decision(action.approval_request_id, actor=owner, verdict="reject",
                                      justification="expected during the migration")
    proposals.handle_approval_outcome(action.approval_request_id)
    action.refresh_from_db()
    assert action.state == "cancelled"


def test_the_tier_differs_in_business_and_off_hours(workflow, live_plan, frozen):
    set_tier(workflow, 3, off_hours=1)
    add(live_plan, "latency_p95_ms", *SPIKE)
    assert evaluator.evaluate_plan(live_plan.pk).handling == "execute"  # 23:32: off hours, tier 1
    RolloutAction.objects.all().delete()
    ActionReview.objects.all().delete()
    frozen.move_to(DAY)
    add(live_plan, "latency_p95_ms", *SPIKE)
    assert evaluator.evaluate_plan(live_plan.pk).handling == "gate"  # 10:00: business hours, tier 3


def tag(workflow, release_manager, **fields):
    return tags.create_context_tag(actor=release_manager, workflow=workflow,
                                   ends_at=clock.now() + timedelta(hours=2),
                                   reason="the migration changes query patterns", **fields)


def test_the_2am_migration_tagged_15_percent_rides_out_its_latency_rise(workflow, live_plan, release_manager):
    set_tier(workflow, 1)
    tag(workflow, release_manager, kind="expected_latency_increase", expected_change_percent=Decimal("15"))
    add(live_plan, "latency_p95_ms", *SPIKE)
    decision = evaluator.evaluate_plan(live_plan.pk)
    assert decision.action == "none"
    check = next(c for c in decision.checks if c.metric == "latency_p95_ms")
    assert check.status == "holding" and check.tag["label"] == "expected_latency_increase: 15%"
    assert not RolloutAction.objects.exists()
    live_plan.refresh_from_db()
    assert live_plan.state == "active"


def test_the_same_rise_untagged_rolls_back(workflow, live_plan):
    set_tier(workflow, 1)
    add(live_plan, "latency_p95_ms", *SPIKE)
    assert evaluator.evaluate_plan(live_plan.pk).handling == "execute"


def test_a_rise_beyond_the_tag_is_rolled_back_by_the_tier_and_the_evidence_cites_the_tag(workflow, live_plan,
                                                                                          release_manager):
    set_tier(workflow, 1)
    tag(workflow, release_manager, kind="expected_latency_increase", expected_change_percent=Decimal("15"))
    add(live_plan, "latency_p95_ms", 1400, 1500, 1600)
    decision = evaluator.evaluate_plan(live_plan.pk)
    assert (decision.action, decision.handling) == ("rollback", "execute")
    action = open_action(live_plan)
    assert action.approval_request_id is None
    assert action.evidence["context_tag"]["label"] == "expected_latency_increase: 15%"
    assert action.evidence["context_tag"]["effect"] == "exceeded"


def test_too_few_samples_for_a_criterion_asks_a_person_before_expanding(workflow, make_plan, owner, release_manager,
                                                                       frozen):
    set_tier(workflow, 1)
    plan = plans.start_rollout(make_plan().pk, actor=release_manager)
    frozen.shift(timedelta(minutes=11))  # the soak is over; the triggers' signals flow, the criteria have too few
    add(plan, "latency_p95_ms", 700, 710, 690)
    add(plan, "error_rate", 0.01, 0.01, 0.01)
    add(plan, "quality_score", 0.9, 0.9)
    decision = evaluator.evaluate_plan(plan.pk)
    assert (decision.action, decision.handling) == ("expand", "gate")
    action = open_action(plan)
    request = approval_of(action)
    assert request.kind == "expansion" and "inconclusive" in request.evidence["reason"]
    assert {c["status"] for c in request.evidence["checks"] if c["kind"] == "criterion"} == {"inconclusive"}
    plan.refresh_from_db()
    assert plan.current_ring == 0 and plan.state == "active"  # nothing passed silently, nothing rolled back
    approval_services.record_decision(request.pk, actor=owner, verdict="approve")
    proposals.handle_approval_outcome(request.pk)
    plan.refresh_from_db()
    assert plan.current_ring == 1


def test_expansion_is_automatic_at_tier_1_when_every_criterion_holds(workflow, make_plan, owner, release_manager,
                                                                    frozen):
    set_tier(workflow, 1)
    from tests.rollouts.conftest import plan_spec

    rings = plan_spec()["rings"]
    rings[1]["approval_point"], rings[2]["approval_point"] = False, True
    plan = plans.start_rollout(make_plan(rings=rings).pk, actor=release_manager)
    frozen.shift(timedelta(minutes=11))
    healthy(plan)
    add(plan, "latency_p95_ms", 700, 710, 690)
    decision = evaluator.evaluate_plan(plan.pk)
    assert (decision.action, decision.handling) == ("expand", "execute")
    plan.refresh_from_db()
    assert plan.current_ring == 1
    assert ActionReview.objects.get().action.kind == "expand"
    assert [e for e in AuditEvent.objects.values_list("action", flat=True) if e.startswith("rollout.")][-2:] == [
        "rollout.action_proposed", "rollout.ring_opened"]


def test_expansion_needs_approval_at_tier_2(workflow, live_plan, frozen):
    set_tier(workflow, 2)
    frozen.shift(timedelta(minutes=11))
    healthy(live_plan)
    add(live_plan, "latency_p95_ms", 700, 710, 690)
    evaluator.evaluate_plan(live_plan.pk)
    assert approval_of(open_action(live_plan)).kind == "expansion"


def test_a_second_evaluation_does_not_ask_twice(workflow, live_plan):
    set_tier(workflow, 3)
    add(live_plan, "latency_p95_ms", *SPIKE)
    evaluator.evaluate_plan(live_plan.pk)
    evaluator.evaluate_plan(live_plan.pk)
    assert RolloutAction.objects.count() == 1 and ApprovalRequest.objects.count() == 1


def test_a_person_rolling_back_cancels_the_pending_proposal_and_its_request(workflow, live_plan, owner):
    proposal = breached(workflow, live_plan, 3)
    containment.roll_back(live_plan.pk, actor=owner, reason="confirmed regression")
    proposal.refresh_from_db()
    assert proposal.state == "cancelled"
    assert approval_of(proposal).state == "cancelled"


def test_owners_of_the_duty_are_emailed_when_a_rollback_ran_without_them(workflow, live_plan, owner, mailoutbox,
                                                                        django_capture_on_commit_callbacks):
    set_tier(workflow, 1)
    add(live_plan, "latency_p95_ms", *SPIKE)
    evaluator.evaluate_plan(live_plan.pk)
    with django_capture_on_commit_callbacks() as callbacks:
        executors.run(open_action(live_plan).pk)
    assert len(callbacks) == 1  # the notice is sent after the rollback is committed
    action = RolloutAction.objects.get(kind="rollback")
    assert notifications.notify_autonomous_action(action.pk) == 1
    assert notifications.notify_autonomous_action(action.pk) == 0  # a second message tells nobody again
    assert mailoutbox == []  # the outbox's worker sends it, after the commit
    [notice] = Notice.objects.filter(event="autonomous_action", subject_id=str(action.pk))
    outbox.deliver(notice.pk)
    [mail] = mailoutbox
    assert mail.to == ["olivia@example.com"]
    assert mail.subject == "[Ringfence] refund-agent: prompt-v2 rolled back automatically"
    assert "latency_p95_ms > 800 sustained for 2 min" in mail.body and f"/rollouts/{live_plan.pk}/" in mail.body


def test_a_queued_evaluation_is_skipped_once_a_later_evaluation_read_its_samples(workflow, live_plan, frozen):
    """A worker that fell behind skips the debounced messages a later evaluation covered, instead of
    running every one in turn while the backlog (and the rollbacks queued behind it) grows."""
    set_tier(workflow, 3)
    cache.delete(f"rollouts:evaluated:{live_plan.pk}")
    add(live_plan, "latency_p95_ms", *SPIKE)
    queued_at = clock.now().timestamp()  # the batch's evaluation was scheduled; the worker is behind
    assert not messages.evaluation_covered(live_plan.pk, queued_at)
    frozen.shift(timedelta(seconds=0.5))
    evaluator.evaluate_plan(live_plan.pk)  # inside the debounce window: later batches of it unread
    assert not messages.evaluation_covered(live_plan.pk, queued_at)
    frozen.shift(timedelta(seconds=1))
    evaluator.evaluate_plan(live_plan.pk)  # after it: every sample the message stands for was read
    assert tasks.evaluate_plan(live_plan.pk, queued_at) == "covered"
    assert tasks.evaluate_plan(live_plan.pk, clock.now().timestamp()) == "rollback"  # a newer batch's runs
    assert RolloutAction.objects.count() == 1
