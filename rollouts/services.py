"""Every change to a rollout: one function per transition.

Each locks the plan (or action) row, checks the change is allowed, changes state, appends its
audit event and schedules side effects (executor runs, evaluations) with `transaction.on_commit`.
Views, the API, Celery tasks and approval outcome handlers call these; nothing else writes.
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

from django.conf import settings
from django.contrib.auth.models import AbstractBaseUser
from django.core.cache import cache
from django.core.exceptions import ValidationError
from django.db import IntegrityError, connection, transaction

from approvals import services as approval_services
from approvals.models import ApprovalRequest
from audit import log as audit
from core import clock
from core.errors import TransitionRefused, require
from core.publishing import publish
from governance.models import ServiceAccount, Workflow
from rollouts import evaluation, messages, selectors
from rollouts.models import (
    DEFAULT_ALLOWED_LATENESS,
    DUTY_FOR_ACTION,
    ActionAttempt,
    ActionReview,
    ContextTag,
    ExpansionCriterion,
    FallbackMode,
    Metric,
    Ring,
    RollbackTrigger,
    RolloutAction,
    RolloutPlan,
    Signal,
    SignalLoss,
)

log = logging.getLogger(__name__)

SYSTEM = "system:rollouts"
Kind, ActionState, Origin = RolloutAction.Kind, RolloutAction.State, RolloutAction.Origin
PlanState = RolloutPlan.State
APPROVAL_KIND = {Kind.ROLLBACK: "rollback", Kind.FALLBACK: "fallback", Kind.EXPAND: "expansion"}
TERMINAL_ACTION_STATES = (ActionState.SUCCEEDED, ActionState.FAILED, ActionState.CANCELLED)

PLAN_FIELDS = ("name", "release_version", "stable_version", "fallback_mode", "executor", "webhook_url", "notes")
RING_FIELDS = ("segment_kind", "segment_value", "exposure_percent", "min_soak", "approval_point")
CRITERION_FIELDS = ("metric", "operator", "threshold", "window", "min_samples")
TRIGGER_FIELDS = ("metric", "operator", "threshold", "off_hours_threshold", "sustained_for", "min_samples", "severity",
                  "breach_statistic", "breach_share", "flap_windows", "flap_breaches", "allowed_lateness",
                  "no_data_after", "on_no_data", "reask_worse_percent", "on_silence")
MAX_REASON = 2000
# A retry message may be delivered a moment before its countdown by the worker's clock.
BACKOFF_SLACK_SECONDS = 0.2

current_route = selectors.current_route  # part of the app's public interface (CONTRACTS.md)


def setting(name: str) -> Any:
    return getattr(settings, name)


# -- helpers ---------------------------------------------------------------------------------

def _lock_plan(plan_id: int) -> RolloutPlan:
    plan = RolloutPlan.objects.select_for_update(of=("self",)).select_related("workflow").filter(pk=plan_id).first()
    require(plan is not None, "not_found", "This rollout plan does not exist.")
    return plan


def _is_user(actor: object) -> bool:
    return isinstance(actor, AbstractBaseUser)


def _requester(actor: object) -> dict:
    if _is_user(actor):
        return {"requested_by": actor, "origin": Origin.PERSON}
    if isinstance(actor, ServiceAccount):
        return {"requested_by_service": actor, "origin": Origin.AGENT}
    return {}


def _clean_reason(reason: str, *, required: bool, what: str = "Say why") -> str:
    reason = (reason or "").strip()
    require(reason or not required, "invalid", f"{what}; the reason goes into the audit trail.", field="reason")
    require(len(reason) <= MAX_REASON, "invalid", "Keep the reason under 2,000 characters.", field="reason")
    return reason


def _require_duty(actor: object, plan: RolloutPlan, kind: str) -> None:
    duty = DUTY_FOR_ACTION[kind]
    require(selectors.holds_duty(actor, plan.workflow, kind), "forbidden",
            f"Only an owner of the {duty.replace('_', ' ')} duty of {plan.workflow.slug} may do this.")


def _transition(plan: RolloutPlan, new_state: str, **fields: Any) -> str:
    require(plan.can_become(new_state), "conflict",
            f"A {plan.get_state_display()} rollout cannot become {RolloutPlan.State(new_state).label}.")
    old = plan.state
    plan.state = new_state
    for name, value in fields.items():
        setattr(plan, name, value)
    plan.save(update_fields=["state", *fields, "updated_at"])
    return old


def _new_action(plan: RolloutPlan, kind: str, *, state: str, origin: str | None = None, executor: str = "none",
                **fields: Any) -> RolloutAction:
    now = clock.now()
    requester = _requester(fields.pop("actor", None))
    if origin is not None:
        requester["origin"] = origin
    requester.setdefault("origin", Origin.TRIGGER)
    return RolloutAction.objects.create(
        plan=plan, kind=kind, state=state, executor=executor, created_at=now,
        closed_at=now if state in TERMINAL_ACTION_STATES else None,
        idempotency_key=f"ringfence-{plan.pk}-{kind}-{uuid.uuid4().hex}", **requester, **fields,
    )


def _enqueue_execution(action: RolloutAction) -> None:
    action_id = action.pk
    transaction.on_commit(lambda: publish("rollouts.tasks.execute_action", (action_id,)))  # else the sweep re-sends it


def _schedule_execution(action: RolloutAction) -> None:
    """An action with an executor is run by a worker; the sweep re-sends it if the message is lost."""
    action.state = ActionState.SCHEDULED
    action.next_attempt_at = clock.now() + timedelta(seconds=setting("ROLLOUT_EXECUTOR_STALL_SECONDS"))
    action.save(update_fields=["state", "next_attempt_at"])
    _enqueue_execution(action)


def _file_review(action: RolloutAction) -> ActionReview:
    """Every action that ran without a person before it gets a post-facto review."""
    review, _ = ActionReview.objects.get_or_create(
        action=action, defaults={"workflow": action.plan.workflow, "created_at": clock.now()})
    return review


def _notify_owners(action: RolloutAction) -> None:
    """The owners of the duty hear of an action no person decided, once it has taken effect."""
    if ActionReview.objects.filter(action=action).exists():
        action_id = action.pk
        transaction.on_commit(lambda: publish("rollouts.tasks.notify_autonomous_action", (action_id,)))


def _cancel_open(plan: RolloutPlan, kinds: set[str], reason: str) -> list[int]:
    """Cancel proposals still waiting for approval (and their requests); returns their ids."""
    cancelled = []
    for action in plan.actions.select_for_update().filter(kind__in=kinds, state=ActionState.PENDING_APPROVAL):
        action.state, action.closed_at = ActionState.CANCELLED, clock.now()
        action.result = {**action.result, "cancelled": reason}
        action.save(update_fields=["state", "closed_at", "result"])
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


def _action_data(action: RolloutAction, **extra: Any) -> dict:
    return {"action": action.pk, "kind": action.kind, "requested_by": action.requester_label, **extra}


# -- plan editing (release managers) ----------------------------------------------------------

def _validated(instance: Any, prefix: str, exclude: list[str] | None = None) -> None:
    try:
        instance.full_clean(exclude=exclude)
    except ValidationError as exc:
        if hasattr(exc, "message_dict"):
            name, messages = next(iter(exc.message_dict.items()))
            field = f"{prefix}{name}" if name != "__all__" else prefix.rstrip(".")
            raise TransitionRefused("invalid", f"{field}: {' '.join(messages)}", field=field) from None
        raise TransitionRefused("invalid", f"{prefix.rstrip('.')}: {' '.join(exc.messages)}") from None


def _children(plan: RolloutPlan, rings: list[dict], criteria: list[dict], triggers: list[dict]) -> None:
    require(len(rings) <= 20 and len(criteria) <= 30 and len(triggers) <= 30, "invalid",
            "A plan has at most 20 rings, 30 criteria and 30 triggers.")
    segments = [(r.get("segment_kind"), r.get("segment_value")) for r in rings]
    require(len(set(segments)) == len(segments), "invalid", "Two rings name the same segment.", field="rings")
    for model, rows, fields, prefix in ((Ring, rings, RING_FIELDS, "rings"),
                                        (ExpansionCriterion, criteria, CRITERION_FIELDS, "criteria"),
                                        (RollbackTrigger, triggers, TRIGGER_FIELDS, "triggers")):
        model.objects.filter(plan=plan).delete()
        objects = []
        for index, row in enumerate(rows):
            unknown = set(row) - set(fields)
            require(not unknown, "invalid", f"{prefix}[{index}]: unknown fields {', '.join(sorted(unknown))}.")
            obj = model(plan=plan, **row, **({"order": index} if model is Ring else {}))
            _validated(obj, f"{prefix}[{index}].", exclude=["plan"])
            objects.append(obj)
        model.objects.bulk_create(objects)


def _summary(plan: RolloutPlan) -> dict:
    return {
        **{name: getattr(plan, name) for name in PLAN_FIELDS if name != "notes"},
        "rings": [f"{r.order}: {r.segment} {r.exposure_percent}% soak {r.min_soak}"
                  f"{' approval' if r.approval_point else ''}"
                  for r in plan.rings.all()],
        "criteria": [str(c) for c in plan.criteria.select_related("metric")],
        "triggers": [f"{t} ({t.severity}, {t.sustained_for}; {t.settings_label()})"
                     for t in plan.triggers.select_related("metric")],
    }


@transaction.atomic
def create_plan(*, actor: AbstractBaseUser, workflow: Workflow, fields: dict, rings: list[dict] = (),
                criteria: list[dict] = (), triggers: list[dict] = ()) -> RolloutPlan:
    """A new draft plan with its rings, criteria and triggers. Audit: `rollout.plan_created`."""
    require(selectors.may_manage(actor, workflow), "forbidden", f"You may not write rollout plans for {workflow.slug}.")
    unknown = set(fields) - set(PLAN_FIELDS)
    require(not unknown, "invalid", f"Unknown plan fields: {', '.join(sorted(unknown))}.")
    plan = RolloutPlan(workflow=workflow, created_by=actor, **fields)
    _validated(plan, "", exclude=["created_by"])
    plan.save()
    _children(plan, list(rings), list(criteria), list(triggers))
    audit.record(actor, "rollout.plan_created", plan, data=_summary(plan))
    return plan


@transaction.atomic
def update_plan(plan_id: int, *, actor: AbstractBaseUser, fields: dict, rings: list[dict], criteria: list[dict],
                triggers: list[dict]) -> RolloutPlan:
    """Replace a draft or ready plan's settings, rings, criteria and triggers.

    A ready plan returns to draft: readiness is checked again when it is marked ready or started.
    Audit: `rollout.plan_updated` with the plan before and after.
    """
    plan = _lock_plan(plan_id)
    require(selectors.may_manage(actor, plan.workflow), "forbidden",
            f"You may not edit rollout plans of {plan.workflow.slug}.")
    require(plan.is_editable, "conflict", f"A {plan.get_state_display()} plan can no longer be edited.")
    unknown = set(fields) - set(PLAN_FIELDS)
    require(not unknown, "invalid", f"Unknown plan fields: {', '.join(sorted(unknown))}.")
    before = _summary(plan)
    for name, value in fields.items():
        setattr(plan, name, value)
    _validated(plan, "")
    was = plan.state
    plan.state = PlanState.DRAFT
    plan.save()
    _children(plan, rings, criteria, triggers)
    after = _summary(plan)
    changes = {k: {"from": before[k], "to": after[k]} for k in after if before.get(k) != after[k]}
    audit.record(actor, "rollout.plan_updated", plan, data={"changes": changes, "state_from": was, "state": plan.state})
    return plan


def _require_launchable(plan: RolloutPlan) -> None:
    missing = selectors.missing_for_launch(plan)
    require(not missing, "not_ready",
            "This plan is not ready to launch. Missing: " + "; ".join(f"{i.label} ({i.detail})" for i in missing))


@transaction.atomic
def mark_ready(plan_id: int, *, actor: AbstractBaseUser) -> RolloutPlan:
    """Draft → ready when launch readiness holds; refused naming every missing item.

    Audit: `rollout.plan_ready` with the checklist.
    """
    plan = _lock_plan(plan_id)
    require(selectors.may_manage(actor, plan.workflow), "forbidden",
            f"You may not manage rollouts of {plan.workflow.slug}.")
    require(plan.state == PlanState.DRAFT, "conflict", f"This plan is already {plan.get_state_display()}.")
    _require_launchable(plan)
    _transition(plan, PlanState.READY)
    audit.record(actor, "rollout.plan_ready", plan, data={"checklist": [i.key for i in selectors.readiness(plan)]})
    return plan


@transaction.atomic
def start_rollout(plan_id: int, *, actor: AbstractBaseUser) -> RolloutPlan:
    """Ready (or a draft that passes readiness) → active at ring 0.

    Readiness is checked again (an owner may have been removed since). One live plan per workflow.
    Audit: `rollout.plan_ready` (when starting a draft), `rollout.started`.
    """
    plan = _lock_plan(plan_id)
    require(selectors.may_manage(actor, plan.workflow), "forbidden",
            f"You may not start rollouts of {plan.workflow.slug}.")
    require(plan.state in (PlanState.DRAFT, PlanState.READY), "conflict",
            f"This plan is already {plan.get_state_display()}.")
    _require_launchable(plan)
    other = selectors.live_plan(plan.workflow)
    require(other is None, "conflict",
            f"{plan.workflow.slug} already has a live rollout ({other.release_version}, {other.state})."
            if other else "")
    if plan.state == PlanState.DRAFT:
        _transition(plan, PlanState.READY)
        audit.record(actor, "rollout.plan_ready", plan, data={"checklist": [i.key for i in selectors.readiness(plan)]})
    now = clock.now()
    _transition(plan, PlanState.ACTIVE, current_ring=0, ring_opened_at=now, started_at=now)
    ring = plan.rings.get(order=0)
    audit.record(actor, "rollout.started", plan,
                 data={"ring": 0, "segment": ring.segment, "exposure_percent": ring.exposure_percent,
                       "release_version": plan.release_version, "stable_version": plan.stable_version})
    return plan


# -- containment: each allowed only to the owner of that duty ---------------------------------

@transaction.atomic
def pause_rollout(plan_id: int, *, actor: Any, reason: str) -> RolloutAction:
    """Active → paused: no ring opens until resumed; exposed segments keep their version.

    Audit: `rollout.paused`.
    """
    plan = _lock_plan(plan_id)
    _require_duty(actor, plan, Kind.PAUSE)
    reason = _clean_reason(reason, required=True, what="Say why the rollout is paused")
    require(plan.state == PlanState.ACTIVE, "conflict",
            f"Only an active rollout can be paused; this one is {plan.get_state_display()}.")
    _transition(plan, PlanState.PAUSED)
    action = _new_action(plan, Kind.PAUSE, state=ActionState.SUCCEEDED, actor=actor, handling="direct", reason=reason)
    audit.record(actor, "rollout.paused", plan, data=_action_data(action, ring=plan.current_ring), reason=reason)
    return action


@transaction.atomic
def resume_rollout(plan_id: int, *, actor: Any, reason: str = "") -> RolloutAction:
    """Paused → active (pause duty) or fallback → active (fallback duty). The soak clock keeps running.

    Leaving a fallback goes through the plan's executor, as engaging it did. With `flag` the route
    API answers from the plan's state, so the plan is active at once. With `webhook` the receiver
    is told (`rollout.resume` with `from: fallback`) and the plan stays in fallback until the
    executor succeeds; a failed exit leaves it there. Resuming from a pause is a state change only.

    Audit: `rollout.resumed` with the state it left; for an exit through the executor,
    `rollout.fallback_exit_requested` now and `rollout.resumed` when the executor succeeds.
    """
    plan = _lock_plan(plan_id)
    require(plan.state in (PlanState.PAUSED, PlanState.FALLBACK), "conflict",
            f"Only a paused rollout or one in fallback can resume; this one is {plan.get_state_display()}.")
    if plan.state == PlanState.FALLBACK:
        require(selectors.holds_duty(actor, plan.workflow, Kind.FALLBACK), "forbidden",
                f"Only an owner of the fallback duty of {plan.workflow.slug} may leave the fallback mode.")
    else:
        _require_duty(actor, plan, Kind.RESUME)
    reason = _clean_reason(reason, required=False)
    left, mode = plan.state, plan.active_fallback_mode
    parameters = {"from": left, "fallback_mode": mode}
    if left == PlanState.FALLBACK and plan.executor != RolloutPlan.Executor.FLAG:
        _require_no_containment_running(plan, Kind.RESUME)
        action = _new_action(plan, Kind.RESUME, state=ActionState.SCHEDULED, actor=actor, executor=plan.executor,
                             handling="direct", reason=reason, parameters=parameters)
        _schedule_execution(action)
        audit.record(actor, "rollout.fallback_exit_requested", plan,
                     data=_action_data(action, fallback_mode=mode, executor=plan.executor), reason=reason)
        return action
    _transition(plan, PlanState.ACTIVE, active_fallback_mode="")
    action = _new_action(plan, Kind.RESUME, state=ActionState.SUCCEEDED, actor=actor, handling="direct",
                         reason=reason, parameters=parameters)
    audit.record(actor, "rollout.resumed", plan, data=_action_data(action, state_from=left, fallback_mode=mode),
                 reason=reason)
    return action


@transaction.atomic
def narrow_rollout(plan_id: int, *, actor: Any, reason: str, to_ring: int | None = None,
                   exposure_percent: int | None = None) -> RolloutAction:
    """Back to an earlier ring, or a lower exposure of the current ring. Takes effect on the
    route API's next answer. Audit: `rollout.narrowed` with before and after."""
    plan = _lock_plan(plan_id)
    _require_duty(actor, plan, Kind.NARROW)
    reason = _clean_reason(reason, required=True, what="Say why exposure is narrowed")
    require(plan.is_live, "conflict", f"Only a live rollout can be narrowed; this one is {plan.get_state_display()}.")
    require((to_ring is None) != (exposure_percent is None), "invalid",
            "Narrow either back to an earlier ring or to a lower exposure, not both.", field="to_ring")
    ring = plan.rings.get(order=plan.current_ring)
    current_exposure = min(ring.exposure_percent, plan.exposure_override if plan.exposure_override is not None else 100)
    before = {"ring": plan.current_ring, "exposure_percent": current_exposure}
    if to_ring is not None:
        require(0 <= to_ring < plan.current_ring, "invalid",
                f"Choose a ring before the current one (0–{plan.current_ring - 1})." if plan.current_ring else
                "The rollout is at its first ring; lower the exposure instead.", field="to_ring")
        plan.current_ring, plan.ring_opened_at, plan.exposure_override = to_ring, clock.now(), None
    else:
        require(0 <= exposure_percent < current_exposure, "invalid",
                f"Choose an exposure below the current {current_exposure} %.", field="exposure_percent")
        plan.exposure_override = exposure_percent
    plan.save(update_fields=["current_ring", "ring_opened_at", "exposure_override", "updated_at"])
    after = {"ring": plan.current_ring, "exposure_percent": exposure_percent if exposure_percent is not None
             else plan.rings.get(order=plan.current_ring).exposure_percent}
    _cancel_open(plan, {Kind.EXPAND}, "exposure was narrowed")
    action = _new_action(plan, Kind.NARROW, state=ActionState.SUCCEEDED, actor=actor, handling="direct", reason=reason,
                         parameters={"before": before, "after": after})
    audit.record(actor, "rollout.narrowed", plan, data=_action_data(action, before=before, after=after), reason=reason)
    return action


def _open_next_ring(plan: RolloutPlan) -> dict:
    nxt = plan.current_ring + 1
    ring = plan.rings.filter(order=nxt).first()
    require(ring is not None, "conflict", "This rollout is at its last ring; complete it instead.")
    require(plan.state == PlanState.ACTIVE, "conflict",
            f"Only an active rollout can expand; this one is {plan.get_state_display()}.")
    plan.current_ring, plan.ring_opened_at, plan.exposure_override = nxt, clock.now(), None
    plan.save(update_fields=["current_ring", "ring_opened_at", "exposure_override", "updated_at"])
    return {"ring": nxt, "segment": ring.segment, "exposure_percent": ring.exposure_percent}


@transaction.atomic
def expand_rollout(plan_id: int, *, actor: Any, reason: str = "") -> RolloutAction:
    """Open the next ring (approve-expansion duty). Proposals waiting for approval are cancelled.

    Audit: `rollout.ring_opened`.
    """
    plan = _lock_plan(plan_id)
    _require_duty(actor, plan, Kind.EXPAND)
    reason = _clean_reason(reason, required=False)
    opened = _open_next_ring(plan)
    _cancel_open(plan, {Kind.EXPAND}, f"ring {opened['ring']} opened by a person")
    action = _new_action(plan, Kind.EXPAND, state=ActionState.SUCCEEDED, actor=actor, handling="direct", reason=reason,
                         parameters=opened)
    audit.record(actor, "rollout.ring_opened", plan, data=_action_data(action, **opened), reason=reason)
    return action


@transaction.atomic
def complete_rollout(plan_id: int, *, actor: Any, reason: str = "") -> RolloutAction:
    """Active at the last ring → completed: the release becomes what every segment gets.

    Audit: `rollout.completed`.
    """
    plan = _lock_plan(plan_id)
    _require_duty(actor, plan, Kind.COMPLETE)
    reason = _clean_reason(reason, required=False)
    require(plan.state == PlanState.ACTIVE, "conflict",
            f"Only an active rollout can complete; this one is {plan.get_state_display()}.")
    last = plan.rings.order_by("-order").values_list("order", flat=True).first()
    require(plan.current_ring == last, "conflict",
            f"The rollout is at ring {plan.current_ring} of {last}; open the last ring first.")
    _transition(plan, PlanState.COMPLETED, closed_at=clock.now())
    _cancel_open(plan, {Kind.EXPAND, Kind.FALLBACK, Kind.ROLLBACK}, "the rollout completed")
    action = _new_action(plan, Kind.COMPLETE, state=ActionState.SUCCEEDED, actor=actor, handling="direct",
                         reason=reason)
    audit.record(actor, "rollout.completed", plan, data=_action_data(action, release_version=plan.release_version),
                 reason=reason)
    return action


def _require_no_containment_running(plan: RolloutPlan, kind: str) -> None:
    running = plan.actions.filter(kind__in=[Kind.ROLLBACK, kind],
                                  state__in=[ActionState.SCHEDULED, ActionState.EXECUTING]).first()
    if running is not None:
        what = "Leaving the fallback mode" if running.kind == Kind.RESUME else f"A {running.kind}"
        raise TransitionRefused("conflict", f"{what} of this rollout is already being executed (action {running.pk}).")


@transaction.atomic
def engage_fallback(plan_id: int, *, actor: Any, reason: str, mode: str = "") -> RolloutAction:
    """Ask the executor to switch exposed segments to a fallback mode (fallback duty).

    Audit: `rollout.fallback_requested`; `rollout.fallback_engaged` when the executor succeeds.
    """
    plan = _lock_plan(plan_id)
    _require_duty(actor, plan, Kind.FALLBACK)
    reason = _clean_reason(reason, required=True, what="Say why the fallback is engaged")
    mode = mode or plan.fallback_mode
    require(mode in FallbackMode.values, "invalid", f"Choose a fallback mode among {', '.join(FallbackMode.values)}.",
            field="mode")
    require(plan.state in (PlanState.ACTIVE, PlanState.PAUSED), "conflict",
            f"A fallback is engaged from an active or paused rollout; this one is {plan.get_state_display()}.")
    _require_no_containment_running(plan, Kind.FALLBACK)
    _cancel_open(plan, {Kind.FALLBACK, Kind.EXPAND}, "a person engaged the fallback")
    action = _new_action(plan, Kind.FALLBACK, state=ActionState.SCHEDULED, actor=actor, executor=plan.executor,
                         handling="direct", reason=reason, parameters={"mode": mode})
    _schedule_execution(action)
    audit.record(actor, "rollout.fallback_requested", plan,
                 data=_action_data(action, mode=mode, executor=plan.executor), reason=reason)
    return action


@transaction.atomic
def roll_back(plan_id: int, *, actor: Any, reason: str) -> RolloutAction:
    """Ask the executor to return every segment to the stable version (rollback duty).

    Audit: `rollout.rollback_requested`; `rollout.rolled_back` when the executor succeeds.
    """
    plan = _lock_plan(plan_id)
    _require_duty(actor, plan, Kind.ROLLBACK)
    reason = _clean_reason(reason, required=True, what="Say why the release is rolled back")
    require(plan.is_live, "conflict",
            f"Only a live rollout can be rolled back; this one is {plan.get_state_display()}.")
    _require_no_containment_running(plan, Kind.ROLLBACK)
    _cancel_open(plan, {Kind.ROLLBACK, Kind.FALLBACK, Kind.EXPAND}, "a person rolled the release back")
    action = _new_action(plan, Kind.ROLLBACK, state=ActionState.SCHEDULED, actor=actor, executor=plan.executor,
                         handling="direct", reason=reason, parameters={"to_version": plan.stable_version})
    _schedule_execution(action)
    audit.record(actor, "rollout.rollback_requested", plan,
                 data=_action_data(action, to_version=plan.stable_version, executor=plan.executor), reason=reason)
    return action


CONTAINMENT = {
    "pause": pause_rollout,
    "resume": resume_rollout,
    "narrow": narrow_rollout,
    "expand": expand_rollout,
    "complete": complete_rollout,
    "fallback": engage_fallback,
    "rollback": roll_back,
}


# -- automated proposals and the autonomy tiers ----------------------------------------------

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
    plan = _lock_plan(plan_id)
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
        opened = _open_next_ring(plan)
        action = _new_action(plan, kind, state=ActionState.SUCCEEDED, **fields)
        _file_review(action)
        audit.record(requester, "rollout.action_proposed", plan, data=_action_data(action, **data), reason=reason)
        audit.record(requester, "rollout.ring_opened", plan, data=_action_data(action, **opened))
        _notify_owners(action)
        return Proposal(action, True)
    if handling == evaluation.EXECUTE:
        action = _new_action(plan, kind, state=ActionState.SCHEDULED, executor=plan.executor, **fields)
        _schedule_execution(action)
        _file_review(action)
    else:
        action = _new_action(plan, kind, state=ActionState.PENDING_APPROVAL, executor=plan.executor, **fields)
        mode = "override_window" if handling == evaluation.OVERRIDE_WINDOW else "gate"
        data["approval_request"] = _ask_approval(action, mode, requester)
        _arm_deadline(action)
    audit.record(requester, "rollout.action_proposed", plan, data=_action_data(action, **data), reason=reason)
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


# Cancelled proposals that start the re-proposal cool-down: only a person's verdict does.
REJECTED_BY_A_PERSON = ("rejected", "overridden")


def _held_back(plan: RolloutPlan, decision: evaluation.Decision, now: datetime) -> str:
    """Why the same finding must not be proposed again now ("" when it may be).

    Expansion: any cancelled proposal from this ring within ROLLOUT_REPROPOSE_COOLDOWN_SECONDS.
    Rollback and fallback: only one a person rejected or overrode within the cool-down (an
    expired or cancelled request is not a rejection), and not even that when the breach has since
    got materially worse: the window's mean moved `reask_worse_percent` % of the threshold further
    beyond than the value the person saw."""
    cooldown = now - timedelta(seconds=setting("ROLLOUT_REPROPOSE_COOLDOWN_SECONDS"))
    recent = plan.actions.filter(kind=decision.action, state=ActionState.CANCELLED, closed_at__gte=cooldown,
                                 origin__in=[Origin.TRIGGER, Origin.CRITERIA])
    if decision.action == Kind.EXPAND:
        return "a proposal to expand from this ring was turned down recently" if recent.filter(
            parameters__from_ring=plan.current_ring).exists() else ""
    check = decision.trigger
    if check is None:
        return ""
    rejected = (recent.filter(trigger_id=check.rule_id, result__approval__in=REJECTED_BY_A_PERSON)
                .select_related("trigger").order_by("-closed_at").first())
    if rejected is None:
        return ""
    seen = (rejected.evidence.get("trigger") or {}).get("value")
    percent = rejected.trigger.reask_worse_percent if rejected.trigger else 25
    if evaluation.worsened(check.operator, check.base_threshold, seen, check.value, percent):
        return ""
    return f"a person turned it down at {rejected.closed_at:%H:%M:%S} and it has not got materially worse"


def evaluate_plan(plan_id: int) -> evaluation.Decision | None:
    """Evaluate a live plan's signals and act on the decision, once.

    First the signals: a trigger whose signals are lost is recorded (`record_signals_lost`) and
    one whose samples are back is closed (`restore_signals`). Then the decision: an open proposal
    of the same kind, or one a person turned down within the cool-down (see `_held_back`), keeps
    the same finding from asking twice. Writes only through those services and `propose_action`.
    Notes when it started, before reading a sample, for `evaluation_covered`, and arms the check
    for the moment a trigger's signals would count as lost if nothing more arrived.
    """
    _note_evaluation_started(plan_id)
    plan = RolloutPlan.objects.select_related("workflow").filter(pk=plan_id).first()
    if plan is None or not plan.is_live:
        return None
    now = clock.now()
    result = selectors.evaluate(plan, now, count_late=False)
    if _follow_signals(plan, result, now):
        plan.refresh_from_db()
        result = selectors.evaluate(plan, now, count_late=False)
        if not plan.is_live:
            return result.decision
    schedule_signal_check(plan.pk, result.next_check_at)
    decision = result.decision
    if not decision.is_action:
        return decision
    why_not = _held_back(plan, decision, now)
    if why_not:
        log.info("plan %s: %s not proposed again: %s", plan.pk, decision.action, why_not)
        return decision
    trigger_id = decision.trigger.rule_id if decision.trigger else None
    evidence = decision.evidence()
    evidence["evaluated_at"] = now.isoformat()
    evidence["tier"] = result.tier
    evidence["business_hours"] = result.business_hours
    try:
        propose_action(plan.pk, kind=decision.action, handling=decision.handling, tier=result.tier,
                       origin=Origin.TRIGGER if decision.trigger else Origin.CRITERIA, evidence=evidence,
                       reason=decision.reason, trigger_id=trigger_id)
    except TransitionRefused as refusal:  # the plan moved on between reading and locking
        log.info("evaluation of plan %s not acted on: %s", plan.pk, refusal.message)
    return decision


def _follow_signals(plan: RolloutPlan, result: selectors.PlanEvaluation, now: datetime) -> bool:
    """Record newly lost signals and close losses whose samples are back; True when anything changed."""
    changed = False
    open_by_trigger = {loss.trigger_id: loss for loss in result.losses}
    for check in result.triggers:
        loss = open_by_trigger.get(check.rule_id)
        try:
            if check.lost and loss is None:
                record_signals_lost(plan.pk, trigger_id=check.rule_id, check=check, tier=result.tier)
                changed = True
            elif not check.lost and loss is not None:
                restore_signals(loss.pk, check=check)
                changed = True
        except TransitionRefused as refusal:  # another evaluation got there first
            log.info("signals of plan %s: %s", plan.pk, refusal.message)
    return changed


@transaction.atomic
def record_signals_lost(plan_id: int, *, trigger_id: int, check: evaluation.Check, tier: int) -> SignalLoss:
    """A trigger of a live plan has had fewer than its minimum samples within its `no_data_after`:
    raise "signals lost" once. Expansion freezes (open expansion proposals are cancelled) and the
    trigger's `on_no_data` is done: notify only; pause an active rollout; or propose a rollback
    handled by the tier. On commit the containment owners are told.

    Audit: `rollout.signals_lost` (and `rollout.paused` or `rollout.action_proposed`)."""
    plan = _lock_plan(plan_id)
    require(plan.is_live, "conflict", f"The rollout is {plan.get_state_display()}.")
    trigger = RollbackTrigger.objects.select_related("metric").filter(pk=trigger_id, plan=plan).first()
    require(trigger is not None, "not_found", "This trigger is not one of the plan's.")
    require(not plan.signal_losses.filter(trigger=trigger, restored_at__isnull=True).exists(), "conflict",
            f"Signals of {check.rule} are already recorded as lost.")
    now = clock.now()
    on_no_data = trigger.effective_on_no_data
    late = Signal.objects.filter(plan=plan, metric_id=trigger.metric_id, late=True).count()
    evidence = {"trigger": check.as_evidence(), "no_data_after": trigger.effective_no_data_after.total_seconds(),
                "min_samples": trigger.min_samples, "late_samples": late}
    since = check.last_received_at or plan.started_at or now
    loss = SignalLoss.objects.create(plan=plan, trigger=trigger, metric=trigger.metric, rule=check.rule[:300],
                                     since=min(since, now), detected_at=now, on_no_data=on_no_data, evidence=evidence)
    cancelled = _cancel_open(plan, {Kind.EXPAND}, f"signals lost: {check.rule}")
    reason = f"signals lost: {check.note}"
    audit.record(SYSTEM, "rollout.signals_lost", plan, reason=reason, data={
        "signal_loss": loss.pk, "trigger": trigger.pk, "rule": check.rule, "since": loss.since,
        "on_no_data": on_no_data, "cancelled_expansions": cancelled, "evidence": evidence})
    if on_no_data == RollbackTrigger.NoData.PAUSE:
        if plan.state == PlanState.ACTIVE:
            _transition(plan, PlanState.PAUSED)
            action = _new_action(plan, Kind.PAUSE, state=ActionState.SUCCEEDED, origin=Origin.TRIGGER,
                                 handling="on_no_data", reason=reason[:MAX_REASON], trigger=trigger,
                                 evidence=evidence)
            audit.record(SYSTEM, "rollout.paused", plan, data=_action_data(action, ring=plan.current_ring,
                                                                         signal_loss=loss.pk), reason=reason)
            loss.outcome = f"rollout paused (action {action.pk}); expansion frozen"
        else:
            loss.outcome = f"already {plan.get_state_display().lower()}, so not paused; expansion frozen"
    elif on_no_data == RollbackTrigger.NoData.ROLLBACK:
        handling = evaluation.HANDLING_BY_TIER[tier]
        proposal = propose_action(plan.pk, kind=Kind.ROLLBACK, handling=handling, tier=tier, origin=Origin.TRIGGER,
                                  evidence={**evidence, "signal_loss": loss.pk, "decision": "rollback",
                                            "handling": handling, "reason": reason},
                                  reason=reason, trigger_id=trigger.pk)
        loss.outcome = f"rollback proposed (action {proposal.action.pk}, {handling.replace('_', ' ')})"
    else:
        loss.outcome = "owners notified; expansion frozen"
    loss.save(update_fields=["outcome"])
    loss_id = loss.pk
    transaction.on_commit(lambda: publish("rollouts.tasks.notify_signals_lost", (loss_id,)))
    return loss


@transaction.atomic
def restore_signals(loss_id: int, *, check: evaluation.Check) -> SignalLoss:
    """Samples are back for a trigger whose signals were lost: close the loss. Expansion thaws, but
    criteria count only samples from now on; a pause stays until a person resumes.

    Audit: `rollout.signals_restored`."""
    plan_id = SignalLoss.objects.filter(pk=loss_id).values_list("plan_id", flat=True).first()
    require(plan_id is not None, "not_found", "This signal loss does not exist.")
    plan = _lock_plan(plan_id)
    loss = SignalLoss.objects.select_for_update().get(pk=loss_id)
    require(loss.is_open, "conflict", "These signals are already back.")
    loss.restored_at = clock.now()
    loss.save(update_fields=["restored_at"])
    audit.record(SYSTEM, "rollout.signals_restored", plan, data={
        "signal_loss": loss.pk, "rule": loss.rule,
        "lost_for_seconds": (loss.restored_at - loss.detected_at).total_seconds(),
        "samples": check.samples})
    return loss


# Delivery bookkeeping of the "signals lost" notice (not state changes: no audit events).

def claim_loss_notice(loss_id: int) -> bool:
    """Whether this caller is the one to tell the owners (the first to ask)."""
    return SignalLoss.objects.filter(pk=loss_id, notified_at__isnull=True).update(notified_at=clock.now()) == 1


def release_loss_notice(loss_id: int) -> None:
    SignalLoss.objects.filter(pk=loss_id, notified=0).update(notified_at=None)


def note_loss_notified(loss_id: int, recipients: int) -> None:
    SignalLoss.objects.filter(pk=loss_id).update(notified_at=clock.now(), notified=recipients)


def untold_losses(plan_id: int | None = None) -> list[int]:
    """Open losses whose owners were not told yet (the notice's message was lost or failed)."""
    losses = SignalLoss.objects.filter(restored_at__isnull=True, notified_at__isnull=True)
    if plan_id is not None:
        losses = losses.filter(plan_id=plan_id)
    return list(losses.values_list("pk", flat=True)[:100])


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
    debounce = setting("ROLLOUT_EVALUATION_DEBOUNCE_SECONDS")
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


def _note_evaluation_started(plan_id: int) -> None:
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
    plan = _lock_plan(RolloutAction.objects.values_list("plan_id", flat=True).get(pk=action_id))
    action = RolloutAction.objects.select_for_update().get(pk=action_id)
    action.plan = plan
    if action.state != ActionState.PENDING_APPROVAL or request_state not in APPROVED_STATES | CLOSED_STATES:
        return action
    data = _action_data(action, approval_request=action.approval_request_id, request_state=request_state)
    if request_state in CLOSED_STATES:
        action.state, action.closed_at = ActionState.CANCELLED, clock.now()
        action.result = {"approval": request_state}
        action.save(update_fields=["state", "closed_at", "result"])
        audit.record(SYSTEM, "rollout.action_cancelled", plan, data=data, reason=f"approval request {request_state}")
        if request_state == "expired" and action.kind in (Kind.ROLLBACK, Kind.FALLBACK):
            _pause_on_silence(plan, action)
        return action
    stale = _stale_reason(action, plan)
    if stale:
        action.state, action.closed_at = ActionState.CANCELLED, clock.now()
        action.result = {"approval": request_state, "cancelled": stale}
        action.save(update_fields=["state", "closed_at", "result"])
        audit.record(SYSTEM, "rollout.action_cancelled", plan, data=data, reason=stale)
        return action
    if request_state == "auto_approved":
        _file_review(action)
    if action.kind == Kind.EXPAND:
        opened = _open_next_ring(plan)
        action.state, action.closed_at, action.result = ActionState.SUCCEEDED, clock.now(), {"approval": request_state}
        action.save(update_fields=["state", "closed_at", "result"])
        audit.record(SYSTEM, "rollout.action_approved", plan, data=data)
        audit.record(SYSTEM, "rollout.ring_opened", plan, data=_action_data(action, **opened))
        return action
    action.result = {"approval": request_state}
    action.save(update_fields=["result"])
    _schedule_execution(action)
    audit.record(SYSTEM, "rollout.action_approved", plan, data=data)
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
    _transition(plan, PlanState.PAUSED)
    pause = _new_action(plan, Kind.PAUSE, state=ActionState.SUCCEEDED, origin=action.origin, handling="on_silence",
                        reason=reason, trigger=trigger, evidence={"unanswered": action.pk})
    audit.record(SYSTEM, "rollout.paused", plan, data=_action_data(pause, ring=plan.current_ring, unanswered=action.pk),
                 reason=reason)


def _stale_reason(action: RolloutAction, plan: RolloutPlan) -> str:
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


# -- execution: attempts, results, the sweep ---------------------------------------------------

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


@transaction.atomic
def begin_attempt(action_id: int, *, worker: str = "") -> Ticket | None:
    """Start one executor attempt, or None when there is nothing to do: the action is finished,
    its backoff has not elapsed, or another worker holds a live lease. An attempt whose worker
    died (lease ran out, no result) is recorded as interrupted. Audit: `rollout.action_cancelled`
    when the plan can no longer take the action, `rollout.action_failed` when attempts run out."""
    plan_id = RolloutAction.objects.filter(pk=action_id).values_list("plan_id", flat=True).first()
    if plan_id is None:
        return None
    plan = _lock_plan(plan_id)  # plan before action: the order every service locks in
    action = RolloutAction.objects.select_for_update().get(pk=action_id)
    action.plan = plan
    if action.state not in (ActionState.SCHEDULED, ActionState.EXECUTING):
        return None
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
    stale = _stale_reason(action, plan)
    if stale and action.state == ActionState.SCHEDULED:
        action.state, action.closed_at, action.result = ActionState.CANCELLED, now, {"cancelled": stale}
        action.save(update_fields=["state", "closed_at", "result"])
        audit.record(SYSTEM, "rollout.action_cancelled", plan, data=_action_data(action), reason=stale)
        return None
    if action.attempts >= setting("ROLLOUT_EXECUTOR_MAX_ATTEMPTS"):
        _fail(action, plan, "every attempt was used up")
        return None
    lease = timedelta(seconds=setting("ROLLOUT_EXECUTOR_LEASE_SECONDS"))
    action.attempts += 1
    action.state, action.next_attempt_at = ActionState.EXECUTING, now + lease
    action.save(update_fields=["attempts", "state", "next_attempt_at"])
    attempt = ActionAttempt.objects.create(action=action, number=action.attempts, started_at=now,
                                           lease_until=now + lease, worker=worker[:200])
    return Ticket(attempt.pk, attempt.number, action.pk, action.kind, action.executor, action.idempotency_key,
                  plan.webhook_url, _payload(action))


def _fail(action: RolloutAction, plan: RolloutPlan, why: str) -> None:
    action.state, action.closed_at, action.next_attempt_at = ActionState.FAILED, clock.now(), None
    action.result = {**action.result, "failed": why}
    action.save(update_fields=["state", "closed_at", "next_attempt_at", "result"])
    audit.record(SYSTEM, "rollout.action_failed", plan, data=_action_data(action, attempts=action.attempts), reason=why)


def backoff(number: int) -> float:
    base = setting("ROLLOUT_EXECUTOR_BACKOFF_SECONDS")
    return min(base * (2 ** (number - 1)), setting("ROLLOUT_EXECUTOR_BACKOFF_MAX_SECONDS"))


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
    Audit: `rollout.rolled_back` / `rollout.fallback_engaged` / `rollout.resumed`, `rollout.action_retry`,
    `rollout.action_failed`."""
    plan_id = ActionAttempt.objects.filter(pk=attempt_id).values_list("action__plan_id", flat=True).get()
    plan = _lock_plan(plan_id)
    attempt = ActionAttempt.objects.select_for_update().get(pk=attempt_id)
    action = RolloutAction.objects.select_for_update().get(pk=attempt.action_id)
    action.plan = plan
    if attempt.outcome != ActionAttempt.Outcome.RUNNING or action.state != ActionState.EXECUTING:
        return AttemptResult(action, None)
    now = clock.now()
    attempt.outcome, attempt.finished_at = outcome, now
    attempt.http_status, attempt.detail = http_status, detail[:2000]
    attempt.save(update_fields=["outcome", "finished_at", "http_status", "detail"])
    if outcome == ActionAttempt.Outcome.OK:
        action.state, action.closed_at, action.next_attempt_at = ActionState.SUCCEEDED, now, None
        action.result = {**action.result, "executed_at": audit.format_time(now), "http_status": http_status,
                         "attempts": action.attempts}
        action.save(update_fields=["state", "closed_at", "next_attempt_at", "result"])
        _apply_effect(action, plan)
        return AttemptResult(action, None)
    if outcome == ActionAttempt.Outcome.RETRYABLE_ERROR and action.attempts < setting("ROLLOUT_EXECUTOR_MAX_ATTEMPTS"):
        wait = backoff(action.attempts)
        action.next_attempt_at = now + timedelta(seconds=wait)
        action.save(update_fields=["next_attempt_at"])
        audit.record(SYSTEM, "rollout.action_retry", plan,
                     data=_action_data(action, attempt=attempt.number, http_status=http_status, retry_in=wait),
                     reason=detail[:500])
        return AttemptResult(action, wait)
    _fail(action, plan, detail[:500] or outcome)
    return AttemptResult(action, None)


def _apply_effect(action: RolloutAction, plan: RolloutPlan) -> None:
    data = _action_data(action, executor=action.executor, attempts=action.attempts,
                        idempotency_key=action.idempotency_key, approval_request=action.approval_request_id,
                        evidence=action.evidence)
    stale = _stale_reason(action, plan)
    if stale:
        audit.record(SYSTEM, "rollout.action_executed", plan, data=data, reason=stale)
        return
    if action.kind == Kind.RESUME:
        _transition(plan, PlanState.ACTIVE, active_fallback_mode="")
        left = {"state_from": PlanState.FALLBACK, "fallback_mode": action.parameters.get("fallback_mode")}
        audit.record(SYSTEM, "rollout.resumed", plan, data={**data, **left}, reason=action.reason)
    elif action.kind == Kind.ROLLBACK:
        _transition(plan, PlanState.ROLLED_BACK, closed_at=clock.now(), exposure_override=None, active_fallback_mode="")
        _cancel_open(plan, {Kind.EXPAND, Kind.FALLBACK}, "the release was rolled back")
        _notify_owners(action)
        audit.record(SYSTEM, "rollout.rolled_back", plan, data={**data, "to_version": plan.stable_version})
    else:
        mode = action.parameters.get("mode") or plan.fallback_mode
        _transition(plan, PlanState.FALLBACK, active_fallback_mode=mode)
        _cancel_open(plan, {Kind.EXPAND}, "the fallback mode was engaged")
        _notify_owners(action)
        audit.record(SYSTEM, "rollout.fallback_engaged", plan, data={**data, "mode": mode})


def sweep_actions(*, limit: int = 100) -> int:
    """Beat: re-send actions whose message was lost or whose worker died (lease ran out), and
    those whose backoff elapsed. Duplicate sends are harmless: begin_attempt holds the lease."""
    now = clock.now()
    stall = timedelta(seconds=setting("ROLLOUT_EXECUTOR_STALL_SECONDS"))
    with transaction.atomic():
        due = list(RolloutAction.objects.select_for_update(skip_locked=True)
                   .filter(state__in=[ActionState.SCHEDULED, ActionState.EXECUTING], next_attempt_at__lte=now)
                   .order_by("next_attempt_at")[:limit])
        for action in due:
            action.next_attempt_at = now + stall
            action.save(update_fields=["next_attempt_at"])
            _enqueue_execution(action)
    return len(due)


# -- post-facto reviews -----------------------------------------------------------------------

@transaction.atomic
def review_action(review_id: int, *, actor: AbstractBaseUser, verdict: str, reason: str = "",
                  note: str = "") -> ActionReview:
    """A containment owner judges an autonomous action: correct, or a false positive with a
    reason category. Audit: `rollout.action_reviewed`."""
    review = (ActionReview.objects.select_for_update(of=("self",)).select_related("workflow", "action", "execution")
              .filter(pk=review_id).first())
    require(review is not None, "not_found", "This review does not exist.")
    require(_is_user(actor) and bool(selectors.duties_of(actor, review.workflow)), "forbidden",
            f"Only containment owners of {review.workflow.slug} review its autonomous actions.")
    require(review.is_pending, "already_decided",
            f"{review.reviewed_by.get_username() if review.reviewed_by_id else 'Someone'} "
            "already reviewed this action.")
    require(verdict in (ActionReview.Verdict.CORRECT, ActionReview.Verdict.FALSE_POSITIVE), "invalid",
            "Choose correct or false positive.", field="verdict")
    if verdict == ActionReview.Verdict.FALSE_POSITIVE:
        require(reason in ActionReview.Reason.values and reason, "invalid",
                "Say why it was a false positive (expected behaviour, noise, known change, other).", field="reason")
    else:
        reason = ""
    note = (note or "").strip()
    require(len(note) <= MAX_REASON, "invalid", "Keep the note under 2,000 characters.", field="note")
    review.verdict, review.reason, review.note = verdict, reason, note
    review.reviewed_by, review.reviewed_at = actor, clock.now()
    review.save(update_fields=["verdict", "reason", "note", "reviewed_by", "reviewed_at"])
    if review.action_id is not None:
        subject, what = review.action.plan, {"action": review.action_id, "kind": review.action.kind}
    else:
        subject, what = review.execution, {"execution": review.execution_id, "kind": "agent_action"}
    audit.record(actor, "rollout.action_reviewed", subject, workflow=review.workflow,
                 data={"review": review.pk, **what, "verdict": verdict, "reason_category": reason}, reason=note)
    return review


# -- context tags -----------------------------------------------------------------------------

DEFAULT_TAG_METRIC = {ContextTag.Kind.EXPECTED_LATENCY_INCREASE: "latency_p95_ms",
                      ContextTag.Kind.EXPECTED_COST_INCREASE: "cost_per_task"}


@transaction.atomic
def create_context_tag(*, actor: Any, workflow: Workflow, kind: str, ends_at: datetime, reason: str,
                       plan: RolloutPlan | None = None, metric: str | None = None,
                       expected_change_percent: Decimal | None = None,
                       starts_at: datetime | None = None) -> ContextTag:
    """Record what a deployment is expected to change, so evaluation widens thresholds or asks a
    person instead of rolling back. Audit: `rollout.context_tag_added`."""
    require(selectors.may_tag(actor, workflow), "forbidden", f"You may not tag deployments of {workflow.slug}.")
    require(kind in ContextTag.Kind.values, "invalid", f"Choose a tag kind among {', '.join(ContextTag.Kind.values)}.",
            field="kind")
    require(plan is None or plan.workflow_id == workflow.pk, "invalid", "That plan belongs to another workflow.",
            field="plan")
    now = clock.now()
    starts_at = starts_at or now
    require(ends_at > starts_at, "invalid", "The tag must end after it starts.", field="ends_at")
    require(ends_at > now, "invalid", "The tag's window is already over.", field="ends_at")
    longest = timedelta(hours=setting("ROLLOUT_TAG_MAX_HOURS"))
    require(ends_at - starts_at <= longest, "invalid",
            f"A tag lasts at most {setting('ROLLOUT_TAG_MAX_HOURS')} hours; tag the next window again.",
            field="ends_at")
    reason = _clean_reason(reason, required=True, what="Say what is expected and why")
    metric_obj = None
    if kind in ContextTag.WINDOW_KINDS:
        require(not metric and expected_change_percent is None, "invalid",
                "A window tag names no metric and no expected change.", field="metric")
    else:
        metric = metric or DEFAULT_TAG_METRIC.get(kind)
        require(metric, "invalid", "Name the metric that is expected to change.", field="metric")
        metric_obj = Metric.objects.filter(slug=metric).first()
        require(metric_obj is not None, "invalid", f"Unknown metric {metric!r}; register it first.", field="metric")
        if kind == ContextTag.Kind.EXPECTED_LATENCY_INCREASE:
            require(metric_obj.is_latency, "invalid", f"{metric} is not a latency metric.", field="metric")
        if kind == ContextTag.Kind.EXPECTED_COST_INCREASE:
            require(metric_obj.is_cost, "invalid", f"{metric} is not a cost metric.", field="metric")
        if expected_change_percent is not None and not isinstance(expected_change_percent, Decimal):
            expected_change_percent = Decimal(str(expected_change_percent))
        require(expected_change_percent is not None and expected_change_percent.is_finite()
                and Decimal("0") < expected_change_percent <= Decimal("1000"), "invalid",
                "Give the expected change in percent (more than 0, at most 1000).", field="expected_change_percent")
    tag = ContextTag(workflow=workflow, plan=plan, kind=kind, metric=metric_obj,
                     expected_change_percent=expected_change_percent, starts_at=starts_at, ends_at=ends_at,
                     reason=reason, author=actor if _is_user(actor) else None,
                     author_service=actor if isinstance(actor, ServiceAccount) else None)
    _validated(tag, "")
    tag.save()
    if plan is not None and plan.is_live:
        schedule_evaluation(plan.pk)
    audit.record(actor, "rollout.context_tag_added", tag, workflow=workflow,
                 data={"tag": tag.label, "metric": metric, "plan": plan.pk if plan else None,
                       "starts_at": starts_at, "ends_at": ends_at}, reason=reason)
    return tag


@transaction.atomic
def withdraw_context_tag(tag_id: int, *, actor: Any, reason: str = "") -> ContextTag:
    """End a tag early; evaluation stops honouring it at once. Audit: `rollout.context_tag_withdrawn`."""
    tag = ContextTag.objects.select_for_update(of=("self",)).select_related("workflow").filter(pk=tag_id).first()
    require(tag is not None, "not_found", "This context tag does not exist.")
    require(selectors.may_tag(actor, tag.workflow), "forbidden", f"You may not change tags of {tag.workflow.slug}.")
    require(tag.withdrawn_at is None, "conflict", "This tag is already withdrawn.")
    tag.withdrawn_at = clock.now()
    tag.save(update_fields=["withdrawn_at"])
    audit.record(actor, "rollout.context_tag_withdrawn", tag, workflow=tag.workflow, data={"tag": tag.label},
                 reason=_clean_reason(reason, required=False))
    return tag


# -- signals ----------------------------------------------------------------------------------

@dataclass(frozen=True)
class IngestResult:
    received: int
    stored: int
    late: int = 0  # stored, but received too long after they were measured to count

    @property
    def duplicates(self) -> int:
        return self.received - self.stored


def ingest_signals(plan: RolloutPlan, rows: list[tuple[int, int | None, str, datetime, float]]) -> IngestResult:
    """Store samples (metric id, ring, segment, observed_at, value) in one statement.

    Samples already stored under the same (plan, metric, time, segment) are duplicates: the first
    value is kept and the count says how many were skipped. A sample received more than its
    metric's allowed lateness (the largest of its triggers' `allowed_lateness`) after it was
    measured is stored flagged `late`: counted on the plan page, never evaluated. Signals are not
    audited one by one (the decisions they lead to are). Schedules a debounced evaluation after
    commit: every arrival, late or not, re-evaluates.
    """
    require(plan.is_live, "conflict",
            f"Plan {plan.pk} is {plan.get_state_display()}; signals are accepted for live rollouts only.")
    if not rows:
        return IngestResult(0, 0)
    now = clock.now()
    cutoffs = {metric_id: now - lateness for metric_id, lateness in
               selectors.lateness_by_metric(list(plan.triggers.only("metric_id", "allowed_lateness"))).items()}
    default_cutoff = now - DEFAULT_ALLOWED_LATENESS
    with transaction.atomic():
        stored, late = _insert_signals(plan.pk, rows, now, cutoffs, default_cutoff)
        schedule_evaluation(plan.pk)
    return IngestResult(len(rows), stored, late)


_STAGE_TYPES = ("int8", "int2", "text", "timestamptz", "float8")


def _insert_signals(plan_id: int, rows: list[tuple], now: datetime, cutoffs: dict[int, datetime],
                    default_cutoff: datetime) -> tuple[int, int]:
    """Insert the rows, skipping duplicates; returns how many were stored and how many of those late."""
    if connection.vendor == "postgresql":
        # COPY into a transaction-scoped staging table, then one INSERT … SELECT that skips duplicates:
        # COPY moves the rows at near-raw speed and ON CONFLICT keeps the first value of a sample.
        cases = " ".join("WHEN %s THEN observed_at < %s" for _ in cutoffs)
        late = f"CASE metric_id {cases} ELSE observed_at < %s END" if cutoffs else "observed_at < %s"
        params = [value for pair in cutoffs.items() for value in pair] + [default_cutoff]
        with connection.cursor() as cursor:
            cursor.execute(
                "CREATE TEMP TABLE IF NOT EXISTS rollouts_signal_stage (metric_id bigint, ring smallint, "
                "segment text, observed_at timestamptz, value float8) ON COMMIT DELETE ROWS")
            with cursor.cursor.copy("COPY rollouts_signal_stage FROM STDIN (FORMAT BINARY)") as copy:
                copy.set_types(_STAGE_TYPES)  # binary: no text to format and parse for each value
                for row in rows:
                    copy.write_row(row)
            cursor.execute(
                "WITH stored AS (INSERT INTO rollouts_signal "
                "(plan_id, metric_id, ring, segment, observed_at, value, received_at, late) "
                f"SELECT %s, metric_id, ring, segment, observed_at, value, %s, {late} FROM rollouts_signal_stage "
                "ON CONFLICT (plan_id, metric_id, observed_at, segment) DO NOTHING RETURNING late) "
                "SELECT count(*), count(*) FILTER (WHERE late) FROM stored",
                [plan_id, now, *params],
            )
            stored, late_count = cursor.fetchone()
            return stored, late_count
    before = Signal.objects.filter(plan_id=plan_id).count()
    before_late = Signal.objects.filter(plan_id=plan_id, late=True).count()
    try:
        Signal.objects.bulk_create(
            [Signal(plan_id=plan_id, metric_id=m, ring=r, segment=s, observed_at=t, value=v, received_at=now,
                    late=t < cutoffs.get(m, default_cutoff))
             for m, r, s, t, v in rows], ignore_conflicts=True, batch_size=2000)
    except IntegrityError as exc:
        raise TransitionRefused("invalid", f"A sample was refused by the database: {exc}") from None
    return (Signal.objects.filter(plan_id=plan_id).count() - before,
            Signal.objects.filter(plan_id=plan_id, late=True).count() - before_late)
