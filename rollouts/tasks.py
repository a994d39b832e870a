"""Thin Celery wrappers around the rollout services. Ids, not instances; outcomes in the services.

Containment does not wait in the queue behind evaluations: an action a task has just scheduled
(a tier-1 rollback, an approved or timed-out proposal) is run by that task at once, a proposal's
deadline is a message of its own held by the worker until the moment it is due, and the owners
of lost signals are told by the evaluation that noticed. The `execute_action` and
`notify_signals_lost` messages, the sweep and beat stay the net for lost messages and dead workers.
"""

from __future__ import annotations

import logging
import socket
import time
from datetime import datetime

from celery import shared_task
from django.conf import settings

from core import clock
from core.publishing import publish
from rollouts import evaluator, execution, executors, messages, notifications, proposals, providers, signals
from rollouts.models import RolloutAction, RolloutPlan

log = logging.getLogger(__name__)
# Early deliveries of a timed message are sent again for their moment.
EARLY_SLACK_SECONDS = 0.05


def _worker_label(task) -> str:
    return f"{socket.gethostname()}:{task.request.hostname or ''}" if task is not None else socket.gethostname()


def run_now(action_id: int, worker: str = "") -> str:
    """One executor attempt in this process; a retryable failure comes back as `execute_action`
    after the backoff the service chose."""
    result = executors.run(action_id, worker=worker or socket.gethostname())
    if result is None:
        return "nothing to do"
    if result.retry_in is not None:
        publish("rollouts.tasks.execute_action", (action_id,), countdown=result.retry_in)
    return result.action.state


@shared_task(bind=True, acks_late=True, reject_on_worker_lost=True, max_retries=None)
def execute_action(self, action_id: int) -> str:
    """One executor attempt; a retryable failure comes back after the backoff the service chose.
    Lost messages and dead workers are covered by `sweep_actions`."""
    result = executors.run(action_id, worker=_worker_label(self))
    if result is None:
        return "nothing to do"
    if result.retry_in is not None:
        raise self.retry(countdown=result.retry_in)
    return result.action.state


def tell_lost_signals(plan_id: int | None = None) -> int:
    """Tell the owners of lost signals from this process, not behind the queue (once per loss)."""
    told = 0
    for loss_id in signals.untold_losses(plan_id):
        try:
            told += notifications.notify_signals_lost(loss_id)
        except Exception:  # released: the next evaluation tries again
            log.exception("the owners of signal loss %s could not be told", loss_id)
    return told


def _run_scheduled(plan_id: int, worker: str) -> list[str]:
    """Run, in this process, the plan's actions that were scheduled and never attempted."""
    ids = list(RolloutAction.objects.filter(plan_id=plan_id, state=RolloutAction.State.SCHEDULED, attempts=0)
               .exclude(executor=RolloutAction.Executor.NONE).values_list("pk", flat=True))
    return [run_now(action_id, worker) for action_id in ids]


@shared_task(bind=True, acks_late=True)
def evaluate_plan(self, plan_id: int, queued_at: float | None = None) -> str:
    """The debounced evaluation after a batch of signals (`queued_at`: when it was scheduled).
    A rollback or fallback it schedules (tier 1) runs here at once."""
    if queued_at is not None and messages.evaluation_covered(plan_id, queued_at):
        return "covered"
    decision = evaluator.evaluate_plan(plan_id)
    if decision is not None and decision.is_action:
        _run_scheduled(plan_id, _worker_label(self))
    tell_lost_signals(plan_id)
    return decision.action if decision else "not live"


@shared_task(bind=True, acks_late=True)
def check_signals(self, plan_id: int, due: float) -> str:
    """Armed for the moment a trigger's signals would count as lost (messages.schedule_signal_check)."""
    if time.time() < due - EARLY_SLACK_SECONDS:
        publish("rollouts.tasks.check_signals", (plan_id, due), eta=datetime.fromtimestamp(due, clock.now().tzinfo))
        return "early"
    decision = evaluator.evaluate_plan(plan_id)
    if decision is not None and decision.is_action:
        _run_scheduled(plan_id, _worker_label(self))
    tell_lost_signals(plan_id)
    return decision.action if decision else "not live"


@shared_task(bind=True, acks_late=True)
def act_at_deadline(self, action_id: int, due: float) -> str:
    """A proposal's override window or gate ran out: close the request, apply the outcome and run
    the executor, all here. Harmless twice, late, or after the approvals timer did its part."""
    early = due - time.time()
    if early > settings.ROLLOUT_DEADLINE_LEAD_SECONDS + EARLY_SLACK_SECONDS:  # the message came too soon
        messages.arm_deadline(action_id, datetime.fromtimestamp(due, clock.now().tzinfo))
        return "early"
    if early > 0:
        time.sleep(early)  # what is left of the lead: the moment itself is the deadline
    state, next_due = proposals.reach_deadline(action_id)
    if next_due is not None and next_due > clock.now():  # escalated, or this message came early
        messages.arm_deadline(action_id, next_due)
    if state == RolloutAction.State.SCHEDULED:
        return run_now(action_id, _worker_label(self))
    return state


def on_approval_closed(request_id: int) -> None:
    """The outcome handler (registered in apps.py): apply the approval's outcome, and run the action
    it scheduled in this process rather than behind the queue."""
    action = proposals.handle_approval_outcome(request_id)
    if action is not None and action.state == RolloutAction.State.SCHEDULED and action.attempts == 0:
        run_now(action.pk)


@shared_task
def evaluate_live_plans() -> int:
    """Beat: evaluate every live plan (signals may have stopped arriving: that is a finding too)."""
    ids = list(RolloutPlan.objects.filter(state__in=RolloutPlan.LIVE_STATES).values_list("pk", flat=True))
    for plan_id in ids:
        try:
            evaluator.evaluate_plan(plan_id)
        except Exception:  # one broken plan must not stop the others' evaluation
            log.exception("evaluation of rollout plan %s failed", plan_id)
    tell_lost_signals()
    return len(ids)


@shared_task
def pull_metrics() -> int:
    """Beat: pull the metrics that are due from their providers for every live plan (rollouts.providers)."""
    return len(providers.pull_due())


@shared_task
def sweep_actions() -> int:
    return execution.sweep_actions(limit=100)


@shared_task(acks_late=True)
def notify_autonomous_action(action_id: int) -> int:
    return notifications.notify_autonomous_action(action_id)


@shared_task(acks_late=True)
def notify_signals_lost(loss_id: int) -> int:
    return notifications.notify_signals_lost(loss_id)


@shared_task
def sample_review_signals() -> int:
    """Beat: Ringfence's own human-review signals for the live plans whose rules read them
    (rollouts.review_signals); each batch schedules its plan's evaluation like pushed samples."""
    from rollouts import review_signals

    return sum(sample.ingested.stored for sample in review_signals.sample_live_plans() if sample.ingested)


RETENTION_BUDGET_SECONDS = 60  # well inside the task time limit; a backlog continues in the next message


@shared_task
def retain_signals() -> dict:
    """Beat, daily: samples older than SIGNAL_RETENTION_DAYS become per-minute rollups (rollouts.retention).
    A backlog longer than one budget goes on at once in a message of its own."""
    from rollouts import retention

    done = retention.retain_signals(budget_seconds=RETENTION_BUDGET_SECONDS)
    if not done.finished:
        publish("rollouts.tasks.retain_signals")
    return {"deleted": done.deleted, "rolled_up": done.rolled_up, "batches": done.batches}
