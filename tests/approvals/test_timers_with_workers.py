"""Timers on real Celery worker and beat processes (TMR-01, TMR-08 a/b, TMR-11).

Escalation policies here use 1–2 s levels; beat sweeps every 0.5 s. Waiting is always for a
named condition with a deadline, never a sleep that hopes.
"""

from __future__ import annotations

import tempfile
import time
from datetime import timedelta
from pathlib import Path

import pytest
from django.conf import settings

from approvals import services, tasks
from approvals.models import ApprovalRequest
from audit.models import AuditEvent
from core import clock
from tests.approvals.figures import report
from tests.support.celery_processes import make_celery_fixture

pytestmark = pytest.mark.django_db(transaction=True)
State = ApprovalRequest.State
PROBE = Path(tempfile.mkdtemp(prefix="ringfence-probe-")) / "outcomes.log"
FIRE = "approvals.tasks.fire_due_timer"

celery = pytest.fixture(scope="module")(make_celery_fixture(
    sweep_seconds=0.5, include=["tests.approvals.outcome_probe"], env={"RINGFENCE_OUTCOME_PROBE_FILE": str(PROBE)},
))


def probe_entries(request_id: int) -> list[tuple[str, bool]]:
    if not PROBE.exists():
        return []
    rows = [line.split() for line in PROBE.read_text().splitlines()]
    return [(state, executed == "1") for pk, state, executed in rows if int(pk) == request_id]


def events(req: ApprovalRequest) -> list[AuditEvent]:
    return list(AuditEvent.objects.filter(subject_type="approvals.approvalrequest", subject_id=str(req.pk))
                .order_by("seq"))


def short_policy(admin, workflow, mode: str, *timeouts: int) -> None:
    services.define_policy(actor=admin, workflow=workflow, mode=mode,
                           levels=[{"groups": ["approver"], "timeout_seconds": t} for t in timeouts])


def ask(workflow, agent, mode: str = "gate", key: str = "") -> ApprovalRequest:
    return services.create_request(workflow=workflow, kind="agent_action", action="refund_customer",
                                   parameters={"order": key or "A-1"}, requester=agent, mode=mode,
                                   idempotency_key=key)


def closed(req: ApprovalRequest) -> ApprovalRequest | None:
    fresh = ApprovalRequest.objects.get(pk=req.pk)
    return None if fresh.is_pending else fresh


def test_a_timer_fires_once_however_often_it_is_delivered(request, celery, admin_user, workflow, agent):
    """TMR-01: the countdown message, the sweep and a redelivered message: one escalation."""
    short_policy(admin_user, workflow, "gate", 1, 60)
    before = len(celery.task_results(FIRE))
    req = ask(workflow, agent)  # commit publishes the countdown for due_at
    for _ in range(2):  # the broker delivers the same timer again (Redis does: RELIABILITY E1)
        tasks.fire_due_timer.apply_async((req.pk, 0), eta=req.due_at)
    celery.wait_for(lambda: len(celery.task_results(FIRE)) >= before + 3, 15, "three timer deliveries ran")
    celery.wait_for(lambda: ApprovalRequest.objects.get(pk=req.pk).level == 1, 5, "the request escalated")
    escalations = [e for e in events(req) if e.action == "approval.escalated"]
    req.refresh_from_db()
    assert req.state == State.PENDING and req.level == 1
    assert len(escalations) == 1
    results = celery.task_results(FIRE)[before:]
    first_due = req.due_at - timedelta(seconds=60)  # escalation counts the next level from the old deadline
    lag = (escalations[0].occurred_at - first_due).total_seconds()
    assert lag >= 0
    report(request, "TMR-01", deliveries=3, transitions=len(escalations), audit_events=len(escalations),
           timer_results=results, lag_due_to_commit_s=round(lag, 3))


def test_silence_lets_an_override_window_proceed_once(request, celery, admin_user, workflow, agent):
    """TMR-08 (a): nobody acts; at the deadline it is auto-approved and executed exactly once."""
    short_policy(admin_user, workflow, "override_window", 2)
    req = ask(workflow, agent, mode="override_window", key="silence")
    done = celery.wait_for(lambda: (r := closed(req)) and r.outcomes_done_at and r, 10,
                           "the window ran out and the outcome handlers ran")
    assert done.state == State.AUTO_APPROVED
    assert probe_entries(req.pk) == [("auto_approved", True)]
    assert [e.action for e in events(req)] == ["approval.requested", "approval.auto_approved"]
    report(request, "TMR-08a", state=done.state, executor_calls=1,
           late_by_s=round((done.closed_at - done.due_at).total_seconds(), 3))


def test_an_override_just_before_the_deadline_wins(request, celery, admin_user, approver, workflow, agent):
    """TMR-08 (b): override at deadline − 0.2 s; the timer then fires and changes nothing."""
    short_policy(admin_user, workflow, "override_window", 2)
    before = len(celery.task_results(FIRE))
    req = ask(workflow, agent, mode="override_window", key="override")
    wait = (req.due_at - clock.now()).total_seconds() - 0.2
    time.sleep(max(0.0, wait))  # act at a chosen instant before the deadline, not hoping for an outcome
    services.record_decision(req.pk, actor=approver, verdict="override", reason="known_change",
                             justification="The latency rise is the planned migration.")
    done = celery.wait_for(lambda: (r := closed(req)) and r.outcomes_done_at and r, 10, "the outcome handlers ran")
    celery.wait_for(lambda: "unchanged" in celery.task_results(FIRE)[before:], 10, "the window's timer fired")
    assert done.state == State.OVERRIDDEN
    assert probe_entries(req.pk) == [("overridden", False)]
    assert [e.action for e in events(req)] == ["approval.requested", "approval.decided", "approval.overridden"]
    report(request, "TMR-08b", state=done.state, executor_calls=0,
           decided_before_deadline_s=round((done.due_at - done.closed_at).total_seconds(), 3))


@pytest.mark.parametrize("mode", ["gate", "override_window"])
def test_escalation_runs_to_the_last_level_and_ends_on_time(request, celery, admin_user, workflow, agent, mode):
    """TMR-11: two 1 s levels, nobody acts: escalated once, then expired (gate) or auto-approved."""
    short_policy(admin_user, workflow, mode, 1, 1)
    req = ask(workflow, agent, mode=mode, key=f"ladder-{mode}")
    done = celery.wait_for(lambda: closed(req), 10, "the last level ran out")
    expected = State.EXPIRED if mode == "gate" else State.AUTO_APPROVED
    assert done.state == expected and done.level == 1
    assert [e.action for e in events(req)] == ["approval.requested", "approval.escalated", f"approval.{expected}"]
    elapsed = (done.closed_at - done.created_at).total_seconds()
    assert 2.0 <= elapsed <= 2.0 + settings.TIMER_SWEEP_SECONDS + 1.5
    report(request, f"TMR-11 {mode}", level_transitions=1, terminal=done.state, configured_s=2.0,
           elapsed_s=round(elapsed, 3))
