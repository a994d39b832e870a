"""Celery tasks: thin wrappers around the services (their messages are sent by approvals.messages)."""

from __future__ import annotations

from celery import shared_task

from approvals import callbacks, executions, messages, notifications, outcomes, services
from approvals.models import ApprovalRequest

SWEEP_LIMIT = 500


@shared_task(acks_late=True)
def fire_due_timer(request_id: int, level: int | None = None) -> str:
    """The precise timer of one request. Harmless when it fires twice, late, or after the sweep."""
    outcome = services.handle_due(request_id, level)
    if outcome == "not_due":  # the message ran a moment early: set it again for the deadline
        row = ApprovalRequest.objects.filter(pk=request_id).values_list("level", "due_at").first()
        if row is not None:
            messages.schedule_timer(request_id, *row)
    return outcome


@shared_task
def sweep_due() -> dict:
    """Beat, every TIMER_SWEEP_SECONDS: the safety net for lost, late and duplicate messages.

    Fires every overdue timer, opens due reminders, and republishes outcome handlers whose messages
    were lost, the outbox's deliveries (approvals' and rollouts' notices) that failed or never ran, and
    agents' callbacks whose message was lost.
    """
    handled = services.handle_all_due(limit=SWEEP_LIMIT)
    unclaimed = executions.expire_unclaimed(limit=SWEEP_LIMIT)
    reminders = notifications.open_due_reminders()
    notices = notifications.stale_notice_ids()
    for notice_id in notices:
        messages.publish_delivery(notice_id)
    requests = outcomes.stale_request_ids()
    for request_id in requests:
        messages.publish_outcome(request_id)
    callbacks_resent = callbacks.resend_due()
    return {"timers": handled, "reminders": reminders, "deliveries": len(notices), "outcomes": len(requests),
            "unclaimed_expired": unclaimed, "callbacks": callbacks_resent}


@shared_task(acks_late=True)
def run_outcome_handlers(request_id: int) -> int:
    return outcomes.run(request_id)


@shared_task(acks_late=True)
def deliver_notice(notice_id: int) -> dict:
    return notifications.deliver(notice_id)


@shared_task(name=callbacks.TASK, acks_late=True)
def deliver_callback(callback_id: int) -> str:
    """One attempt at an agent's callback; a retryable failure is published again after its backoff."""
    return callbacks.attempt_delivery(callback_id)
