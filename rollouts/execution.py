"""Execution of scheduled actions: one attempt at a time under a lease, retries with backoff, the
effect on the plan when the executor succeeds, and the sweep that re-sends what was lost.

A worker calls `begin_attempt` (lease, attempt row), runs the executor outside any transaction
(rollouts.executors), then `record_action_attempt`. Duplicate messages are harmless: the lease
and the action's state decide whether there is anything to do.

Audit actions: `rollout.action_started` (the first attempt), `rollout.action_cancelled` (the plan
can no longer take it), `rollout.action_retry`, `rollout.action_failed`; on success
`rollout.rolled_back`, `rollout.fallback_engaged` or `rollout.resumed`, or `rollout.action_executed`
when the plan had moved on meanwhile.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from django.conf import settings
from django.db import transaction

from audit import log as audit
from core import clock
from rollouts.actions import (
    SYSTEM,
    ActionState,
    Kind,
    action_data,
    cancel_open,
    enqueue_execution,
    move_action,
    notify_owners,
    stale_reason,
)
from rollouts.models import ActionAttempt, RolloutAction, RolloutPlan
from rollouts.notifications import open_rollback_notice
from rollouts.plans import lock_plan, move_plan

PlanState = RolloutPlan.State

AUDIT_ACTIONS = (
    "rollout.action_started", "rollout.action_cancelled", "rollout.action_retry", "rollout.action_failed",
    "rollout.rolled_back", "rollout.fallback_engaged", "rollout.resumed", "rollout.action_executed",
)
# A retry message may be delivered a moment before its countdown by the worker's clock.
BACKOFF_SLACK_SECONDS = 0.2


@dataclass(frozen=True)
class Ticket:
    """What a worker needs to run one attempt; the effect happens in record_action_attempt."""

    attempt_id: int
    number: int
    action_id: int
    kind: str
    executor: str
    idempotency_key: str
    webhook_url: str
    payload: dict


def _payload(action: RolloutAction) -> dict:
    """The same bytes on every attempt: receivers compare them with the idempotency key."""
    plan = action.plan
    return {
        "event": f"rollout.{action.kind}",
        "action_id": action.pk,
        "idempotency_key": action.idempotency_key,
        "workflow": plan.workflow.slug,
        "plan": plan.pk,
        "release_version": plan.release_version,
        "stable_version": plan.stable_version,
        "parameters": action.parameters,
        "requested_by": action.requester_label,
        "requested_at": audit.format_time(action.created_at),
    }


def backoff(number: int) -> float:
    base = settings.ROLLOUT_EXECUTOR_BACKOFF_SECONDS
    return min(base * (2 ** (number - 1)), settings.ROLLOUT_EXECUTOR_BACKOFF_MAX_SECONDS)


def _lock_action(action_id: int) -> RolloutAction | None:
    plan_id = RolloutAction.objects.filter(pk=action_id).values_list("plan_id", flat=True).first()
    if plan_id is None:
        return None
    plan = lock_plan(plan_id)  # plan before action: the order every service locks in
    action = RolloutAction.objects.select_for_update().get(pk=action_id)
    action.plan = plan
    return action


@transaction.atomic
def begin_attempt(action_id: int, *, worker: str = "") -> Ticket | None:
    """Start one executor attempt, or None when there is nothing to do: the action is finished,
    its backoff has not elapsed, or another worker holds a live lease. An attempt whose worker
    died (lease ran out, no result) is recorded as interrupted. Audit: `rollout.action_started`
    for the first attempt, `rollout.action_cancelled` when the plan can no longer take the action,
    `rollout.action_failed` when attempts run out."""
    action = _lock_action(action_id)
    if action is None or action.state not in (ActionState.SCHEDULED, ActionState.EXECUTING):
        return None
    plan = action.plan
    now = clock.now()
    attempts = list(action.attempt_log.order_by("-number")[:1])
    last = attempts[0] if attempts else None
    running = last if last is not None and last.outcome == ActionAttempt.Outcome.RUNNING else None
    if running is not None and running.lease_until > now:
        return None
    if (last is not None and last.outcome == ActionAttempt.Outcome.RETRYABLE_ERROR
            and last.finished_at + timedelta(seconds=backoff(last.number) - BACKOFF_SLACK_SECONDS) > now):
        return None
    if running is not None:
        running.outcome, running.finished_at = ActionAttempt.Outcome.INTERRUPTED, now
        running.detail = "no result recorded before the lease ran out (worker lost?)"
        running.save(update_fields=["outcome", "finished_at", "detail"])
    stale = stale_reason(action, plan)
    if stale and action.state == ActionState.SCHEDULED:
        move_action(action, ActionState.CANCELLED, actor=SYSTEM, event="rollout.action_cancelled", reason=stale,
                    result={"cancelled": stale})
        return None
    if action.attempts >= settings.ROLLOUT_EXECUTOR_MAX_ATTEMPTS:
        _fail(action, "every attempt was used up")
        return None
    lease_until = now + timedelta(seconds=settings.ROLLOUT_EXECUTOR_LEASE_SECONDS)
    number = action.attempts + 1
    if action.state == ActionState.SCHEDULED:
        move_action(action, ActionState.EXECUTING, actor=SYSTEM, event="rollout.action_started",
                    data={"attempt": number, "executor": action.executor, "worker": worker[:200]},
                    attempts=number, next_attempt_at=lease_until)
    else:  # a retry: the action stays executing
        action.attempts, action.next_attempt_at = number, lease_until
        action.save(update_fields=["attempts", "next_attempt_at"])
    attempt = ActionAttempt.objects.create(action=action, number=number, started_at=now, lease_until=lease_until,
                                           worker=worker[:200])
    return Ticket(attempt.pk, attempt.number, action.pk, action.kind, action.executor, action.idempotency_key,
                  plan.webhook_url, _payload(action))


def _fail(action: RolloutAction, why: str) -> None:
    move_action(action, ActionState.FAILED, actor=SYSTEM, event="rollout.action_failed", reason=why,
                data={"attempts": action.attempts}, next_attempt_at=None, result={**action.result, "failed": why})
    if action.kind == Kind.ROLLBACK:
        open_rollback_notice(action, failed=True)


@dataclass(frozen=True)
class AttemptResult:
    action: RolloutAction
    retry_in: float | None  # seconds until the next attempt, when one is due


@transaction.atomic
def record_action_attempt(attempt_id: int, *, outcome: str, http_status: int | None = None,
                          detail: str = "") -> AttemptResult:
    """Record how an attempt ended and move the action on: success applies the effect (the plan
    rolls back, enters fallback or leaves it); a retryable error schedules the next attempt with
    backoff; otherwise the action fails. A late result for an attempt already closed changes nothing.
    Audit: `rollout.rolled_back` / `rollout.fallback_engaged` / `rollout.resumed` (or
    `rollout.action_executed` when the plan moved on meanwhile), `rollout.action_retry`,
    `rollout.action_failed`."""
    action_id = ActionAttempt.objects.filter(pk=attempt_id).values_list("action_id", flat=True).get()
    action = _lock_action(action_id)
    attempt = ActionAttempt.objects.select_for_update().get(pk=attempt_id)
    if attempt.outcome != ActionAttempt.Outcome.RUNNING or action.state != ActionState.EXECUTING:
        return AttemptResult(action, None)
    now = clock.now()
    attempt.outcome, attempt.finished_at = outcome, now
    attempt.http_status, attempt.detail = http_status, detail[:2000]
    attempt.save(update_fields=["outcome", "finished_at", "http_status", "detail"])
    if outcome == ActionAttempt.Outcome.OK:
        _take_effect(action, now, http_status)
        return AttemptResult(action, None)
    if outcome == ActionAttempt.Outcome.RETRYABLE_ERROR and action.attempts < settings.ROLLOUT_EXECUTOR_MAX_ATTEMPTS:
        wait = backoff(action.attempts)
        action.next_attempt_at = now + timedelta(seconds=wait)
        action.save(update_fields=["next_attempt_at"])
        audit.record(SYSTEM, "rollout.action_retry", action.plan,
                     data=action_data(action, attempt=attempt.number, http_status=http_status, retry_in=wait),
                     reason=detail[:500])
        return AttemptResult(action, wait)
    _fail(action, detail[:500] or outcome)
    return AttemptResult(action, None)


def _take_effect(action: RolloutAction, now: datetime, http_status: int | None) -> None:
    """The executor succeeded: the plan rolls back, enters its fallback mode or leaves it, unless it
    moved on meanwhile (then only the execution is recorded)."""
    plan = action.plan
    data = {"executor": action.executor, "attempts": action.attempts, "idempotency_key": action.idempotency_key,
            "approval_request": action.approval_request_id, "evidence": action.evidence}
    done = {"closed_at": now, "next_attempt_at": None,
            "result": {**action.result, "executed_at": audit.format_time(now), "http_status": http_status,
                       "attempts": action.attempts}}
    stale = stale_reason(action, plan)
    if stale:
        move_action(action, ActionState.SUCCEEDED, actor=SYSTEM, event="rollout.action_executed", data=data,
                    reason=stale, **done)
    elif action.kind == Kind.RESUME:
        move_plan(plan, PlanState.ACTIVE, active_fallback_mode="")
        left = {"state_from": PlanState.FALLBACK, "fallback_mode": action.parameters.get("fallback_mode")}
        move_action(action, ActionState.SUCCEEDED, actor=SYSTEM, event="rollout.resumed", data={**data, **left},
                    reason=action.reason, **done)
    elif action.kind == Kind.ROLLBACK:
        move_plan(plan, PlanState.ROLLED_BACK, closed_at=now, exposure_override=None, active_fallback_mode="")
        move_action(action, ActionState.SUCCEEDED, actor=SYSTEM, event="rollout.rolled_back",
                    data={**data, "to_version": plan.stable_version}, **done)
        cancel_open(plan, {Kind.EXPAND, Kind.FALLBACK}, "the release was rolled back", actor=SYSTEM)
        notify_owners(action)
        open_rollback_notice(action, failed=False)
    else:
        mode = action.parameters.get("mode") or plan.fallback_mode
        move_plan(plan, PlanState.FALLBACK, active_fallback_mode=mode)
        move_action(action, ActionState.SUCCEEDED, actor=SYSTEM, event="rollout.fallback_engaged",
                    data={**data, "mode": mode}, **done)
        cancel_open(plan, {Kind.EXPAND}, "the fallback mode was engaged", actor=SYSTEM)
        notify_owners(action)


def sweep_actions(*, limit: int = 100) -> int:
    """Beat: re-send actions whose message was lost or whose worker died (lease ran out), and
    those whose backoff elapsed. Duplicate sends are harmless: begin_attempt holds the lease."""
    now = clock.now()
    stall = timedelta(seconds=settings.ROLLOUT_EXECUTOR_STALL_SECONDS)
    with transaction.atomic():
        due = list(RolloutAction.objects.select_for_update(skip_locked=True)
                   .filter(state__in=[ActionState.SCHEDULED, ActionState.EXECUTING], next_attempt_at__lte=now)
                   .order_by("next_attempt_at")[:limit])
        for action in due:
            action.next_attempt_at = now + stall
            action.save(update_fields=["next_attempt_at"])
            enqueue_execution(action)
    return len(due)
