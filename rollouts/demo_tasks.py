"""The zero-setup demo's own task, loaded by workers only when ROLLOUT_DEMO_SIGNALS is on
(settings.CELERY_IMPORTS): no production task reaches the demo."""

from __future__ import annotations

from celery import shared_task

from rollouts import demo


@shared_task
def feed_demo_signals() -> int:
    """Keep the demo's live plans' signals flowing."""
    return demo.feed()
