"""Rollout Celery messages sent after commit; the task bodies are in rollouts.tasks."""

from __future__ import annotations

from datetime import datetime, timedelta

from django.conf import settings

from core import clock
from core.publishing import publish

COUNTDOWN_HORIZON_SECONDS = 15 * 60


def arm_deadline(action_id: int, due_at: datetime) -> None:
    """Publish `act_at_deadline` for a proposal's deadline when it is near enough for a held
    message (as approvals.tasks.schedule_timer does); later ones are the approvals timer's. It is
    due ROLLOUT_DEADLINE_LEAD_SECONDS early: due tasks wait their turn in the worker's pool
    behind the evaluations due before them, and the task waits out what is left of the lead."""
    horizon = min(COUNTDOWN_HORIZON_SECONDS, settings.CELERY_BROKER_VISIBILITY_TIMEOUT / 2)
    if (due_at - clock.now()).total_seconds() > horizon:
        return
    lead = timedelta(seconds=settings.ROLLOUT_DEADLINE_LEAD_SECONDS)
    publish("rollouts.tasks.act_at_deadline", (action_id, due_at.timestamp()), eta=due_at - lead)
