"""Celery tasks: thin wrappers around the services, plus the on-commit publishers they use.

Publishing never breaks a committed transition: if the broker is away the message is dropped
with a warning, and the sweep (beat, every TIMER_SWEEP_SECONDS) finds the work in the database.
"""

from __future__ import annotations

from datetime import datetime

from celery import shared_task
from django.conf import settings

from governance import clock
from governance.tasks import publish

SWEEP_LIMIT = 500
COUNTDOWN_HORIZON_SECONDS = 15 * 60


def schedule_timer(request_id: int, level: int, due_at: datetime) -> None:
    """Publish the precise timer for `due_at` when it is near enough for a countdown message:
    within 15 minutes (RELIABILITY 4.3) and half the broker's visibility timeout, so Redis never
    redelivers it early and workers do not hold thousands of ETA messages. Later deadlines are
    the sweep's, which is never more than TIMER_SWEEP_SECONDS late."""
    horizon = min(COUNTDOWN_HORIZON_SECONDS, settings.CELERY_BROKER_VISIBILITY_TIMEOUT / 2)
    if (due_at - clock.now()).total_seconds() > horizon:
        return
    publish(fire_due_timer, (request_id, level), eta=due_at)


def publish_outcome(request_id: int) -> None:
    publish(run_outcome_handlers, (request_id,))


def publish_delivery(notice_id: int) -> None:
    publish(deliver_notice, (notice_id,))


@shared_task(acks_late=True)
def fire_due_timer(request_id: int, level: int | None = None) -> str:
    """The precise timer of one request. Harmless when it fires twice, late, or after the sweep."""
    from approvals import services
    from approvals.models import ApprovalRequest

    outcome = services.handle_due(request_id, level)
    if outcome == "not_due":  # the message ran a moment early: set it again for the deadline
        row = ApprovalRequest.objects.filter(pk=request_id).values_list("level", "due_at").first()
        if row is not None:
            schedule_timer(request_id, *row)
    return outcome


@shared_task
def sweep_due() -> dict:
    """Beat, every TIMER_SWEEP_SECONDS: the safety net for lost, late and duplicate messages.

    Fires every overdue timer, opens due reminders, and republishes deliveries and outcome
    handlers whose messages were lost.
    """
    from approvals import executions, notifications, outcomes, services

    handled = services.handle_all_due(limit=SWEEP_LIMIT)
    unclaimed = executions.expire_unclaimed(limit=SWEEP_LIMIT)
    reminders = notifications.open_due_reminders()
    notices = notifications.stale_notice_ids()
    for notice_id in notices:
        publish_delivery(notice_id)
    requests = outcomes.stale_request_ids()
    for request_id in requests:
        publish_outcome(request_id)
    return {"timers": handled, "reminders": reminders, "deliveries": len(notices), "outcomes": len(requests),
            "unclaimed_expired": unclaimed}


@shared_task(acks_late=True)
def run_outcome_handlers(request_id: int) -> int:
    from approvals import outcomes

    return outcomes.run(request_id)


@shared_task(acks_late=True)
def deliver_notice(notice_id: int) -> dict:
    from approvals import notifications

    return notifications.deliver(notice_id)
