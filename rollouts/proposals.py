"""Proposals: rollbacks, fallbacks and expansions asked for by a trigger, the criteria or an agent,
handled as the autonomy tier in force says, and what their approval requests' outcomes do.

Tier 1 executes at once and files a post-facto review; an override window proceeds at its
deadline unless a person overrides it; a gate waits for an approval. The proposal acts at its
request's deadline itself (`reach_deadline`), and `apply_approval_outcome` moves it on once its
request closes, however often it is called.

Audit actions: `rollout.action_proposed`, `rollout.ring_opened` (an expansion that opens a ring),
`rollout.action_approved`, `rollout.action_cancelled`, `rollout.paused` (a rollback nobody answered).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any

from django.db import transaction

from approvals import services as approval_services
from approvals.models import ApprovalRequest
from audit import log as audit
from core.errors import require
from governance.models import ServiceAccount
from rollouts import evaluation, messages, selectors
from rollouts.actions import (
    MAX_REASON,
    SYSTEM,
    ActionState,
    Kind,
    action_data,
    enqueue_execution,
    file_review,
    move_action,
    new_action,
    notify_owners,
    stale_reason,
    stall_deadline,
)
from rollouts.models import ContextTag, RollbackTrigger, RolloutAction, RolloutPlan
from rollouts.plans import lock_plan, move_plan, open_next_ring

PlanState = RolloutPlan.State

AUDIT_ACTIONS = ("rollout.action_proposed", "rollout.ring_opened", "rollout.action_approved",
                 "rollout.action_cancelled", "rollout.paused")
APPROVAL_KIND = {Kind.ROLLBACK: "rollback", Kind.FALLBACK: "fallback", Kind.EXPAND: "expansion"}


def _ask_approval(action: RolloutAction, mode: str, requester: object) -> int:
    plan = action.plan
    request = approval_services.create_request(
        workflow=plan.workflow, kind=APPROVAL_KIND[action.kind], action=f"rollout.{action.kind}",
        parameters={"plan": plan.pk, "release_version": plan.release_version, "stable_version": plan.stable_version,
                    **action.parameters},
        evidence=action.evidence, requester=requester, mode=mode, idempotency_key=f"rollout-action-{action.pk}",
        confidence=action.confidence, subject=action,
    )
    action.approval_request = request
    action.save(update_fields=["approval_request"])
    return request.pk


def _arm_deadline(action: RolloutAction) -> None:
    """The proposal acts at its request's deadline itself (`reach_deadline`): an override window's
    rollback runs when the window closes, not a queue later."""
    action_id = action.pk
    due_at = action.approval_request.due_at
    transaction.on_commit(lambda: messages.arm_deadline(action_id, due_at))


@dataclass(frozen=True)
class Proposal:
    action: RolloutAction
    created: bool


@transaction.atomic
def propose_action(plan_id: int, *, kind: str, handling: str, tier: int, origin: str, evidence: dict,
                   reason: str = "", requester: Any = SYSTEM, trigger_id: int | None = None,
                   confidence: Decimal | None = None, client_key: str = "") -> Proposal:
    """A rollback, fallback or expansion proposed by a trigger, the criteria or an agent.

    Handling follows the autonomy tier: `execute` runs at once and files a post-facto review;
    `override_window` opens an approval request that proceeds at its deadline unless overridden;
    `gate` waits for an approval. An open proposal of the same kind is returned instead of a
    second one. Audit: `rollout.action_proposed` (and `rollout.ring_opened` for an automatic expansion).
    """
    plan = lock_plan(plan_id)
    require(kind in APPROVAL_KIND, "invalid", f"Only {', '.join(APPROVAL_KIND)} can be proposed.", field="kind")
    require(plan.is_live, "conflict", f"The rollout is {plan.get_state_display()}; nothing to contain.")
    if kind == Kind.FALLBACK:
        require(plan.state != PlanState.FALLBACK, "conflict", "The rollout is already in its fallback mode.")
    if kind == Kind.EXPAND:
        require(plan.state == PlanState.ACTIVE, "conflict", f"A {plan.get_state_display()} rollout does not expand.")
    same = {Kind.ROLLBACK} if kind == Kind.ROLLBACK else {kind, Kind.ROLLBACK}
    existing = plan.actions.filter(kind__in=same, state__in=RolloutAction.OPEN_STATES).first()
    if existing is not None:
        return Proposal(existing, False)
    fields = {"tier": tier, "handling": handling, "evidence": evidence, "reason": reason[:MAX_REASON],
              "trigger_id": trigger_id, "confidence": confidence, "client_key": client_key, "origin": origin,
              "actor": requester if isinstance(requester, ServiceAccount) else None}
    if kind == Kind.EXPAND:
        fields["parameters"] = {"from_ring": plan.current_ring, "to_ring": plan.current_ring + 1}
    elif kind == Kind.FALLBACK:
        fields["parameters"] = {"mode": plan.fallback_mode}
    else:
        fields["parameters"] = {"to_version": plan.stable_version}
    data: dict[str, Any] = {"tier": tier, "handling": handling, "origin": origin, "evidence": evidence}
    if handling == evaluation.EXECUTE and kind == Kind.EXPAND:
        opened = open_next_ring(plan)
        action = new_action(plan, kind, state=ActionState.SUCCEEDED, **fields)
        file_review(action)
        audit.record(requester, "rollout.action_proposed", plan, data=action_data(action, **data), reason=reason)
        audit.record(requester, "rollout.ring_opened", plan, data=action_data(action, **opened))
        notify_owners(action)
        return Proposal(action, True)
    if handling == evaluation.EXECUTE:
        action = new_action(plan, kind, state=ActionState.SCHEDULED, executor=plan.executor, **fields)
        file_review(action)
    else:
        action = new_action(plan, kind, state=ActionState.PENDING_APPROVAL, executor=plan.executor, **fields)
        mode = "override_window" if handling == evaluation.OVERRIDE_WINDOW else "gate"
        data["approval_request"] = _ask_approval(action, mode, requester)
        _arm_deadline(action)
    audit.record(requester, "rollout.action_proposed", plan, data=action_data(action, **data), reason=reason)
    return Proposal(action, True)


def handling_for(plan: RolloutPlan, at: datetime, *, metric: str | None = None) -> tuple[int, str, dict | None]:
    """The tier in force and how an agent's proposed rollback is handled. A tag in force that
    expects a change of the proposal's metric makes it wait for a person (gate): whether what the
    agent saw is within the expected change is for a person to say. A migration or maintenance
    window (no magnitude) only turns an automatic action into an override window: a person can
    stop it, silence proceeds."""
    tier = plan.workflow.tier_at(at)
    handling = evaluation.HANDLING_BY_TIER[tier]
    tags = list(selectors.tags_in_force(plan.workflow, plan, at))
    for tag in tags:
        if metric and tag.metric_id and tag.metric.slug == metric:
            return tier, evaluation.GATE, selectors.as_evaluation_tag(tag).as_evidence(
                "gate", "the proposal is about the metric this tag expects to change: a person decides")
    windows = [t for t in tags if t.kind in ContextTag.WINDOW_KINDS]
    if windows and handling == evaluation.EXECUTE:
        return tier, evaluation.OVERRIDE_WINDOW, selectors.as_evaluation_tag(windows[-1]).as_evidence(
            "override_window", "an automatic action becomes an override window: a person can stop it, silence proceeds")
    return tier, handling, None


# -- approval outcomes ------------------------------------------------------------------------

def handle_approval_outcome(request_id: int) -> RolloutAction | None:
    """Called (possibly more than once) when an approval request about a rollout action closes."""
    found = RolloutAction.objects.filter(approval_request_id=request_id).values_list(
        "pk", "approval_request__state").first()
    if found is None:
        return None
    action_id, request_state = found
    return apply_approval_outcome(action_id, request_state=request_state)


def reach_deadline(action_id: int) -> tuple[str, datetime | None]:
    """The deadline of a proposal's approval request has come: fire the request's timer (the same
    transition as the approvals timer; whichever runs first acts and the other changes nothing)
    and apply its outcome to the proposal at once, without waiting for the outcome message.

    Returns the action's state, and the request's next deadline while it is still pending
    (escalated to its next level, or the message came a moment early)."""
    request_id = RolloutAction.objects.filter(pk=action_id).values_list("approval_request_id", flat=True).first()
    if request_id is None:
        return "missing", None
    outcome = approval_services.handle_due(request_id)
    state, due_at, held = ApprovalRequest.objects.values_list("state", "due_at", "held_at").get(pk=request_id)
    if state == ApprovalRequest.State.PENDING:
        return outcome, None if held else due_at
    action = handle_approval_outcome(request_id)
    return (action.state if action else "missing"), None


APPROVED_STATES = {"approved", "auto_approved"}
CLOSED_STATES = {"rejected", "overridden", "expired", "cancelled"}


@transaction.atomic
def apply_approval_outcome(action_id: int, *, request_state: str) -> RolloutAction:
    """Approved (or the override window ran out): execute; rejected, overridden, expired or
    cancelled: the proposal is cancelled. Guarded by the action's state, so a second call
    changes nothing. Audit: `rollout.action_approved` or `rollout.action_cancelled`."""
    plan = lock_plan(RolloutAction.objects.values_list("plan_id", flat=True).get(pk=action_id))
    action = RolloutAction.objects.select_for_update().get(pk=action_id)
    action.plan = plan
    if action.state != ActionState.PENDING_APPROVAL or request_state not in APPROVED_STATES | CLOSED_STATES:
        return action
    data = {"approval_request": action.approval_request_id, "request_state": request_state}
    if request_state in CLOSED_STATES:
        move_action(action, ActionState.CANCELLED, actor=SYSTEM, event="rollout.action_cancelled", data=data,
                    reason=f"approval request {request_state}", result={"approval": request_state})
        if request_state == "expired" and action.kind in (Kind.ROLLBACK, Kind.FALLBACK):
            _pause_on_silence(plan, action)
        return action
    stale = stale_reason(action, plan)
    if stale:
        move_action(action, ActionState.CANCELLED, actor=SYSTEM, event="rollout.action_cancelled", data=data,
                    reason=stale, result={"approval": request_state, "cancelled": stale})
        return action
    if request_state == "auto_approved":
        file_review(action)
    if action.kind == Kind.EXPAND:
        opened = open_next_ring(plan)
        move_action(action, ActionState.SUCCEEDED, actor=SYSTEM, event="rollout.action_approved", data=data,
                    result={"approval": request_state})
        audit.record(SYSTEM, "rollout.ring_opened", plan, data=action_data(action, **opened))
        return action
    move_action(action, ActionState.SCHEDULED, actor=SYSTEM, event="rollout.action_approved", data=data,
                result={"approval": request_state}, next_attempt_at=stall_deadline())
    enqueue_execution(action)
    return action


def _pause_on_silence(plan: RolloutPlan, action: RolloutAction) -> None:
    """Nobody answered a rollback or fallback request through its whole escalation: silence is not
    a rejection. The proposal is asked again at the next evaluation (no cool-down), and with the
    trigger's `on_silence` = pause (the default; agents' proposals too) an active rollout pauses
    meanwhile, so silence leads to containment. Audit: `rollout.paused`."""
    trigger = RollbackTrigger.objects.filter(pk=action.trigger_id).first() if action.trigger_id else None
    if (trigger is not None and trigger.on_silence != RollbackTrigger.Silence.PAUSE) or plan.state != PlanState.ACTIVE:
        return
    reason = f"nobody answered the {action.kind} request (action {action.pk}) before its escalation ran out"
    move_plan(plan, PlanState.PAUSED)
    pause = new_action(plan, Kind.PAUSE, state=ActionState.SUCCEEDED, origin=action.origin, handling="on_silence",
                       reason=reason, trigger=trigger, evidence={"unanswered": action.pk})
    audit.record(SYSTEM, "rollout.paused", plan, data=action_data(pause, ring=plan.current_ring, unanswered=action.pk),
                 reason=reason)
