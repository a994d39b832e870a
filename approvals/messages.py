"""The approval timers' and outcome handlers' Celery messages, and the notification outbox's
deliveries (approvals' and rollouts' notices), sent after commit.

Publishing never breaks a committed transition: if the broker is away the message is dropped
with a warning, and the sweep (beat, every TIMER_SWEEP_SECONDS) finds the work in the database.
"""

from __future__ import annotations

from datetime import datetime

from django.conf import settings

from core import clock
from core.publishing import publish

COUNTDOWN_HORIZON_SECONDS = 15 * 60


def schedule_timer(request_id: int, level: int, due_at: datetime) -> None:
    """Publish the precise timer for `due_at` when it is near enough for a countdown message:
    within 15 minutes (RELIABILITY 4.3) and half the broker's visibility timeout, so Redis never
    redelivers it early and workers do not hold thousands of ETA messages. Later deadlines are
    the sweep's, which is never more than TIMER_SWEEP_SECONDS late."""
    horizon = min(COUNTDOWN_HORIZON_SECONDS, settings.CELERY_BROKER_VISIBILITY_TIMEOUT / 2)
    if (due_at - clock.now()).total_seconds() > horizon:
        return
    publish("approvals.tasks.fire_due_timer", (request_id, level), eta=due_at)


def publish_outcome(request_id: int) -> None:
    publish("approvals.tasks.run_outcome_handlers", (request_id,))


def publish_delivery(notice_id: int) -> None:
    publish("approvals.tasks.deliver_notice", (notice_id,))
