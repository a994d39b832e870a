"""Publishing Celery messages, apart from the task bodies.

Services name the task they want run (``"approvals.tasks.fire_due_timer"``) and never import a
tasks module, so a task may call services without an import cycle.
"""

from __future__ import annotations

import logging

from celery import current_app

logger = logging.getLogger(__name__)


def publish(task: str, args: tuple = (), **options) -> bool:
    """Send the task named `task` without ever breaking the committed change: if the broker is away
    the message is dropped with a warning and False returned. Callers whose work must not be lost
    keep it in the database for a sweep (timers, rollout actions)."""
    try:
        current_app.send_task(task, args, retry=False, **options)
    except Exception:  # the database is the truth
        logger.warning("could not publish %s%r", task, args, exc_info=True)
        return False
    return True
