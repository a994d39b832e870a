"""Rollout Celery messages sent after commit; the task bodies are in rollouts.tasks.

Evaluations are debounced here (at most one message per plan per debounce window, and a message
an evaluation that started later has already covered is skipped), a plan's "signals lost" check is
armed for its moment, and a proposal's deadline is published for the worker to hold.
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta

from django.conf import settings
from django.core.cache import cache
from django.db import transaction

from core import clock
from core.publishing import publish

log = logging.getLogger(__name__)

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


def schedule_signal_check(plan_id: int, at: datetime | None) -> None:
    """Arm an evaluation for the moment a trigger's signals would count as lost if nothing more
    arrived, so "signals lost" is raised then, not at the next beat evaluation. One message per
    plan at a time: a later deadline (samples kept coming) waits for the one armed to fire, which
    evaluates and arms the next; an earlier one is armed at once."""
    if at is None:
        return
    key = f"rollouts:signal-check:{plan_id}"
    try:
        armed = cache.get(key)
        if armed is not None and clock.now().timestamp() < armed <= at.timestamp() + 0.05:
            return
        cache.set(key, at.timestamp(), timeout=max(60, int((at - clock.now()).total_seconds()) + 60))
    except Exception:  # without the cache, beat's evaluation is the net
        log.warning("signal check of plan %s not armed", plan_id, exc_info=True)
        return
    transaction.on_commit(lambda: publish("rollouts.tasks.check_signals", (plan_id, at.timestamp()), eta=at))


def _debounce() -> tuple[float, int]:
    """The countdown of a debounced evaluation, and how long (whole seconds, as the cache keeps
    keys) the first batch holds off scheduling another: the batches of that window are its."""
    debounce = settings.ROLLOUT_EVALUATION_DEBOUNCE_SECONDS
    return debounce, max(1, round(debounce))


def schedule_evaluation(plan_id: int) -> None:
    """Debounced: at most one evaluation per plan per ROLLOUT_EVALUATION_DEBOUNCE_SECONDS; beat is the net.

    The message carries when it was queued (after the commit), so a worker that has fallen behind
    skips the messages an evaluation that started later has already covered (`evaluation_covered`).
    """
    countdown, hold = _debounce()
    try:
        first = cache.add(f"rollouts:evaluate:{plan_id}", 1, timeout=hold)
    except Exception:  # a cache outage must not lose signals; beat evaluates anyway
        log.warning("evaluation debounce unavailable for plan %s", plan_id, exc_info=True)
        return
    if first:
        transaction.on_commit(lambda: publish(
            "rollouts.tasks.evaluate_plan", (plan_id, clock.now().timestamp()), countdown=countdown))


def note_evaluation_started(plan_id: int) -> None:
    """Noted by the evaluator before it reads a sample, for `evaluation_covered`."""
    try:
        cache.set(f"rollouts:evaluated:{plan_id}", clock.now().timestamp(), timeout=3600)
    except Exception:  # without the note, queued evaluations simply all run
        log.warning("evaluation start of plan %s not noted", plan_id, exc_info=True)


def evaluation_covered(plan_id: int, queued_at: float) -> bool:
    """Whether an evaluation started after the debounce window of a message queued at `queued_at`
    had closed: it read every sample that message stood for, so running it again adds nothing.

    Without this, a worker that falls behind (more plans posting than it evaluates per second)
    runs every queued message in turn, the backlog only grows, and rollbacks queue behind it.
    """
    try:
        started = cache.get(f"rollouts:evaluated:{plan_id}")
    except Exception:
        return False
    return started is not None and started >= queued_at + _debounce()[1]
