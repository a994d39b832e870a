"""Approval requests with short escalation levels, and what their timers did, read from the audit trail."""

from __future__ import annotations

from collections import Counter
from datetime import datetime

from approvals import services
from approvals.models import ApprovalRequest
from audit.models import AuditEvent

FIRE = "approvals.tasks.fire_due_timer"
SWEEP = "approvals.tasks.sweep_due"
TIMER_ACTIONS = ("approval.escalated", "approval.expired", "approval.auto_approved")


def short_policy(admin, workflow, *timeouts: int, mode: str = "gate") -> None:
    """Levels of `timeouts` seconds each (approvers at every level)."""
    services.define_policy(actor=admin, workflow=workflow, mode=mode,
                           levels=[{"groups": ["approver"], "timeout_seconds": t} for t in timeouts])


def ask(workflow, agent, n: int, *, mode: str = "gate") -> ApprovalRequest:
    return services.create_request(workflow=workflow, kind="agent_action", action="refund_customer",
                                   parameters={"order": f"R-{n}"}, requester=agent, mode=mode,
                                   idempotency_key=f"reliability-{n}")


def timer_events(requests: list[ApprovalRequest]) -> list[AuditEvent]:
    ids = [str(r.pk) for r in requests]
    return list(AuditEvent.objects.filter(subject_type="approvals.approvalrequest", subject_id__in=ids,
                                          action__in=TIMER_ACTIONS).order_by("seq"))


def doubled(events: list[AuditEvent]) -> int:
    """Timer transitions recorded more than once for the same request, action and level."""
    counts = Counter((e.subject_id, e.action, e.data.get("level")) for e in events)
    return sum(n - 1 for n in counts.values() if n > 1)


def first_escalations(requests: list[ApprovalRequest]) -> dict[int, datetime]:
    """When each request's first timer transition was committed (request id → occurred_at)."""
    seen: dict[int, datetime] = {}
    for event in timer_events(requests):
        seen.setdefault(int(event.subject_id), event.occurred_at)
    return seen
