"""Thin Celery wrappers around the rollout services. Ids, not instances; outcomes in the services."""

from __future__ import annotations

import logging
import socket

from celery import shared_task

log = logging.getLogger(__name__)


@shared_task(bind=True, acks_late=True, reject_on_worker_lost=True, max_retries=None)
def execute_action(self, action_id: int) -> str:
    """One executor attempt; a retryable failure comes back after the backoff the service chose.
    Lost messages and dead workers are covered by `sweep_actions`."""
    from rollouts import executors

    result = executors.run(action_id, worker=f"{socket.gethostname()}:{self.request.hostname or ''}")
    if result is None:
        return "nothing to do"
    if result.retry_in is not None:
        raise self.retry(countdown=result.retry_in)
    return result.action.state


@shared_task(acks_late=True)
def evaluate_plan(plan_id: int, queued_at: float | None = None) -> str:
    """The debounced evaluation after a batch of signals (`queued_at`: when it was scheduled)."""
    from rollouts import services

    if queued_at is not None and services.evaluation_covered(plan_id, queued_at):
        return "covered"
    decision = services.evaluate_plan(plan_id)
    return decision.action if decision else "not live"


@shared_task
def evaluate_live_plans() -> int:
    """Beat: evaluate every live plan (signals may have stopped arriving: that is a finding too)."""
    from rollouts import services
    from rollouts.models import RolloutPlan

    ids = list(RolloutPlan.objects.filter(state__in=RolloutPlan.LIVE_STATES).values_list("pk", flat=True))
    for plan_id in ids:
        try:
            services.evaluate_plan(plan_id)
        except Exception:  # one broken plan must not stop the others' evaluation
            log.exception("evaluation of rollout plan %s failed", plan_id)
    return len(ids)


@shared_task
def sweep_actions() -> int:
    from rollouts import services

    return services.sweep_actions(limit=100)


@shared_task
def feed_demo_signals() -> int:
    """Zero-setup demo only (ROLLOUT_DEMO_SIGNALS): keep the demo's live plans' signals flowing."""
    from rollouts import demo

    return demo.feed()


@shared_task(acks_late=True)
def notify_autonomous_action(action_id: int) -> int:
    from rollouts import notifications

    return notifications.notify_autonomous_action(action_id)
