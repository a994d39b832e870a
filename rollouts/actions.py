"""Rollout actions: the record of each containment step and its one state machine.

An action is created in the state its service decides (done at once, scheduled for an executor, or
waiting for an approval) and from then on changes state only through `move_action`, which checks
`RolloutAction.TRANSITIONS` and writes the transition's audit event in the caller's transaction.
The services that create and move actions live beside this module: containment (a person's
duty), proposals (triggers, criteria and agents), execution (the executor's attempts).

Audit actions written here: `rollout.action_cancelled` (`cancel_open`); `move_action` writes the
event its caller names.
"""

from __future__ import annotations

import logging
import uuid
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.contrib.auth.models import AbstractBaseUser
from django.db import transaction

from approvals import services as approval_services
from audit import log as audit
from core import clock
from core.errors import TransitionRefused, require
from core.publishing import publish
from governance.models import ServiceAccount
from rollouts.models import ActionReview, RolloutAction, RolloutPlan

log = logging.getLogger(__name__)

SYSTEM = "system:rollouts"
Kind, ActionState, Origin = RolloutAction.Kind, RolloutAction.State, RolloutAction.Origin
PlanState = RolloutPlan.State
TERMINAL_ACTION_STATES = (ActionState.SUCCEEDED, ActionState.FAILED, ActionState.CANCELLED)
MAX_REASON = 2000

AUDIT_ACTIONS = ("rollout.action_cancelled",)


def is_user(actor: object) -> bool:
    return isinstance(actor, AbstractBaseUser)


def clean_reason(reason: str, *, required: bool, what: str = "Say why") -> str:
    reason = (reason or "").strip()
    require(reason or not required, "invalid", f"{what}; the reason goes into the audit trail.", field="reason")
    require(len(reason) <= MAX_REASON, "invalid", "Keep the reason under 2,000 characters.", field="reason")
    return reason


def _requester(actor: object) -> dict:
    if is_user(actor):
        return {"requested_by": actor, "origin": Origin.PERSON}
    if isinstance(actor, ServiceAccount):
        return {"requested_by_service": actor, "origin": Origin.AGENT}
    return {}


def action_data(action: RolloutAction, **extra: Any) -> dict:
    return {"action": action.pk, "kind": action.kind, "requested_by": action.requester_label, **extra}


def stall_deadline() -> datetime:
    """When the sweep sends a scheduled action again if no worker has started it (message lost)."""
    return clock.now() + timedelta(seconds=settings.ROLLOUT_EXECUTOR_STALL_SECONDS)


def enqueue_execution(action: RolloutAction) -> None:
    action_id = action.pk
    transaction.on_commit(lambda: publish("rollouts.tasks.execute_action", (action_id,)))  # else the sweep re-sends it


def new_action(plan: RolloutPlan, kind: str, *, state: str, origin: str | None = None, executor: str = "none",
               **fields: Any) -> RolloutAction:
    """A new action in its first state; a scheduled one is sent to a worker after commit (the
    sweep sends it again if that message is lost)."""
    now = clock.now()
    requester = _requester(fields.pop("actor", None))
    if origin is not None:
        requester["origin"] = origin
    requester.setdefault("origin", Origin.TRIGGER)
    if state == ActionState.SCHEDULED:
        fields.setdefault("next_attempt_at", stall_deadline())
    action = RolloutAction.objects.create(
        plan=plan, kind=kind, state=state, executor=executor, created_at=now,
        closed_at=now if state in TERMINAL_ACTION_STATES else None,
        idempotency_key=f"ringfence-{plan.pk}-{kind}-{uuid.uuid4().hex}", **requester, **fields,
    )
    if state == ActionState.SCHEDULED:
        enqueue_execution(action)
    return action


def move_action(action: RolloutAction, state: str, *, actor: Any, event: str, reason: str = "",
                data: dict | None = None, **fields: Any) -> RolloutAction:
    """The only way an action changes state: refused (`conflict`) unless `RolloutAction.TRANSITIONS`
    allows it; a final state stamps `closed_at`. Writes `event` about the action's plan, with the
    states left and entered, in the caller's transaction, which holds the action's row lock."""
    if not action.can_become(state):
        raise TransitionRefused("conflict", f"Action {action.pk} ({action.kind}, {action.get_state_display()}) "
                                            f"cannot become {ActionState(state).label}.")
    left = action.state
    action.state = state
    if state in TERMINAL_ACTION_STATES:
        fields.setdefault("closed_at", clock.now())
    for name, value in fields.items():
        setattr(action, name, value)
    action.save(update_fields=["state", *fields])
    audit.record(actor, event, action.plan, reason=reason,
                 data=action_data(action, **(data or {}), action_state_from=left, action_state=state))
    return action


def cancel_open(plan: RolloutPlan, kinds: set[str], reason: str, *, actor: Any) -> list[int]:
    """Cancel the plan's proposals of these kinds still waiting for approval, and their requests;
    returns their ids. Audit: `rollout.action_cancelled` for each (and `approval.cancelled`)."""
    cancelled = []
    for action in plan.actions.select_for_update().filter(kind__in=kinds, state=ActionState.PENDING_APPROVAL):
        action.plan = plan
        move_action(action, ActionState.CANCELLED, actor=actor, event="rollout.action_cancelled", reason=reason,
                    data={"approval_request": action.approval_request_id},
                    result={**action.result, "cancelled": reason})
        cancelled.append(action.pk)
        if action.approval_request_id:
            _cancel_approval_request(action.approval_request_id, reason)
    return cancelled


def _cancel_approval_request(request_id: int, reason: str) -> None:
    try:
        with transaction.atomic():
            approval_services.cancel_request(request_id, actor=SYSTEM, reason=reason)
    except TransitionRefused as refusal:
        log.info("approval request %s not cancelled: %s", request_id, refusal.message)


def stale_reason(action: RolloutAction, plan: RolloutPlan) -> str:
    """Why the plan can no longer take this action ("" when it still can)."""
    if action.kind == Kind.EXPAND:
        if plan.state != PlanState.ACTIVE or plan.current_ring != action.parameters.get("from_ring"):
            return f"the rollout moved on (now {plan.get_state_display()} at ring {plan.current_ring})"
        lost = plan.signal_losses.filter(restored_at__isnull=True).values_list("rule", flat=True).first()
        if lost is not None:
            return f"signals lost ({lost}): expansion is frozen"
        return ""
    if action.kind == Kind.RESUME:  # leaving a fallback: only from the fallback it was asked in
        return "" if plan.state == PlanState.FALLBACK else f"the rollout is {plan.get_state_display()}"
    target = PlanState.ROLLED_BACK if action.kind == Kind.ROLLBACK else PlanState.FALLBACK
    if not plan.can_become(target):
        return f"the rollout is {plan.get_state_display()}"
    return ""


def file_review(action: RolloutAction) -> ActionReview:
    """Every action that ran without a person before it gets a post-facto review."""
    review, _ = ActionReview.objects.get_or_create(
        action=action, defaults={"workflow": action.plan.workflow, "created_at": clock.now()})
    return review


def notify_owners(action: RolloutAction) -> None:
    """The owners of the duty hear of an action no person decided, once it has taken effect."""
    if ActionReview.objects.filter(action=action).exists():
        action_id = action.pk
        transaction.on_commit(lambda: publish("rollouts.tasks.notify_autonomous_action", (action_id,)))
