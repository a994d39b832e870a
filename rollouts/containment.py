"""Containment by a person: pause, resume, narrow, expand, complete, fallback, roll back.

Each is allowed only to an owner of its duty (`DUTY_FOR_ACTION`; a service account acts for its
owner), locks the plan, checks, changes and audits in one transaction. Pause, resume, narrow,
expand and complete take effect at once; fallback, rollback and leaving a fallback on a webhook
plan are scheduled for the plan's executor (rollouts.execution applies them).

Audit actions: `rollout.paused`, `rollout.resumed`, `rollout.fallback_exit_requested`,
`rollout.narrowed`, `rollout.ring_opened`, `rollout.completed`, `rollout.fallback_requested`,
`rollout.rollback_requested`; `rollout.action_cancelled` for each proposal a step makes moot.
"""

from __future__ import annotations

from typing import Any

from django.db import transaction

from audit import log as audit
from core import clock
from core.errors import TransitionRefused, require
from rollouts import selectors
from rollouts.actions import ActionState, Kind, action_data, cancel_open, clean_reason, new_action
from rollouts.models import DUTY_FOR_ACTION, FallbackMode, RolloutAction, RolloutPlan
from rollouts.plans import lock_plan, move_plan, open_next_ring

PlanState = RolloutPlan.State

AUDIT_ACTIONS = (
    "rollout.paused", "rollout.resumed", "rollout.fallback_exit_requested", "rollout.narrowed", "rollout.ring_opened",
    "rollout.completed", "rollout.fallback_requested", "rollout.rollback_requested",
)


def _require_duty(actor: object, plan: RolloutPlan, kind: str) -> None:
    duty = DUTY_FOR_ACTION[kind]
    require(selectors.holds_duty(actor, plan.workflow, kind), "forbidden",
            f"Only an owner of the {duty.replace('_', ' ')} duty of {plan.workflow.slug} may do this.")


@transaction.atomic
def pause_rollout(plan_id: int, *, actor: Any, reason: str) -> RolloutAction:
    """Active → paused: no ring opens until resumed; exposed segments keep their version.

    Audit: `rollout.paused`.
    """
    plan = lock_plan(plan_id)
    _require_duty(actor, plan, Kind.PAUSE)
    reason = clean_reason(reason, required=True, what="Say why the rollout is paused")
    require(plan.state == PlanState.ACTIVE, "conflict",
            f"Only an active rollout can be paused; this one is {plan.get_state_display()}.")
    move_plan(plan, PlanState.PAUSED)
    action = new_action(plan, Kind.PAUSE, state=ActionState.SUCCEEDED, actor=actor, handling="direct", reason=reason)
    audit.record(actor, "rollout.paused", plan, data=action_data(action, ring=plan.current_ring), reason=reason)
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
    plan = lock_plan(plan_id)
    require(plan.state in (PlanState.PAUSED, PlanState.FALLBACK), "conflict",
            f"Only a paused rollout or one in fallback can resume; this one is {plan.get_state_display()}.")
    if plan.state == PlanState.FALLBACK:
        require(selectors.holds_duty(actor, plan.workflow, Kind.FALLBACK), "forbidden",
                f"Only an owner of the fallback duty of {plan.workflow.slug} may leave the fallback mode.")
    else:
        _require_duty(actor, plan, Kind.RESUME)
    reason = clean_reason(reason, required=False)
    left, mode = plan.state, plan.active_fallback_mode
    parameters = {"from": left, "fallback_mode": mode}
    if left == PlanState.FALLBACK and plan.executor != RolloutPlan.Executor.FLAG:
        _require_no_containment_running(plan, Kind.RESUME)
        action = new_action(plan, Kind.RESUME, state=ActionState.SCHEDULED, actor=actor, executor=plan.executor,
                            handling="direct", reason=reason, parameters=parameters)
        audit.record(actor, "rollout.fallback_exit_requested", plan,
                     data=action_data(action, fallback_mode=mode, executor=plan.executor), reason=reason)
        return action
    move_plan(plan, PlanState.ACTIVE, active_fallback_mode="")
    action = new_action(plan, Kind.RESUME, state=ActionState.SUCCEEDED, actor=actor, handling="direct",
                        reason=reason, parameters=parameters)
    audit.record(actor, "rollout.resumed", plan, data=action_data(action, state_from=left, fallback_mode=mode),
                 reason=reason)
    return action


@transaction.atomic
def narrow_rollout(plan_id: int, *, actor: Any, reason: str, to_ring: int | None = None,
                   exposure_percent: int | None = None) -> RolloutAction:
    """Back to an earlier ring, or a lower exposure of the current ring. Takes effect on the
    route API's next answer. Audit: `rollout.narrowed` with before and after."""
    plan = lock_plan(plan_id)
    _require_duty(actor, plan, Kind.NARROW)
    reason = clean_reason(reason, required=True, what="Say why exposure is narrowed")
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
    cancel_open(plan, {Kind.EXPAND}, "exposure was narrowed", actor=actor)
    action = new_action(plan, Kind.NARROW, state=ActionState.SUCCEEDED, actor=actor, handling="direct", reason=reason,
                        parameters={"before": before, "after": after})
    audit.record(actor, "rollout.narrowed", plan, data=action_data(action, before=before, after=after), reason=reason)
    return action


@transaction.atomic
def expand_rollout(plan_id: int, *, actor: Any, reason: str = "") -> RolloutAction:
    """Open the next ring (approve-expansion duty). Proposals waiting for approval are cancelled.

    Audit: `rollout.ring_opened`.
    """
    plan = lock_plan(plan_id)
    _require_duty(actor, plan, Kind.EXPAND)
    reason = clean_reason(reason, required=False)
    opened = open_next_ring(plan)
    cancel_open(plan, {Kind.EXPAND}, f"ring {opened['ring']} opened by a person", actor=actor)
    action = new_action(plan, Kind.EXPAND, state=ActionState.SUCCEEDED, actor=actor, handling="direct", reason=reason,
                        parameters=opened)
    audit.record(actor, "rollout.ring_opened", plan, data=action_data(action, **opened), reason=reason)
    return action


@transaction.atomic
def complete_rollout(plan_id: int, *, actor: Any, reason: str = "") -> RolloutAction:
    """Active at the last ring → completed: the release becomes what every segment gets.

    Audit: `rollout.completed`.
    """
    plan = lock_plan(plan_id)
    _require_duty(actor, plan, Kind.COMPLETE)
    reason = clean_reason(reason, required=False)
    require(plan.state == PlanState.ACTIVE, "conflict",
            f"Only an active rollout can complete; this one is {plan.get_state_display()}.")
    last = plan.rings.order_by("-order").values_list("order", flat=True).first()
    require(plan.current_ring == last, "conflict",
            f"The rollout is at ring {plan.current_ring} of {last}; open the last ring first.")
    move_plan(plan, PlanState.COMPLETED, closed_at=clock.now())
    cancel_open(plan, {Kind.EXPAND, Kind.FALLBACK, Kind.ROLLBACK}, "the rollout completed", actor=actor)
    action = new_action(plan, Kind.COMPLETE, state=ActionState.SUCCEEDED, actor=actor, handling="direct",
                        reason=reason)
    audit.record(actor, "rollout.completed", plan, data=action_data(action, release_version=plan.release_version),
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
    plan = lock_plan(plan_id)
    _require_duty(actor, plan, Kind.FALLBACK)
    reason = clean_reason(reason, required=True, what="Say why the fallback is engaged")
    mode = mode or plan.fallback_mode
    require(mode in FallbackMode.values, "invalid", f"Choose a fallback mode among {', '.join(FallbackMode.values)}.",
            field="mode")
    require(plan.state in (PlanState.ACTIVE, PlanState.PAUSED), "conflict",
            f"A fallback is engaged from an active or paused rollout; this one is {plan.get_state_display()}.")
    _require_no_containment_running(plan, Kind.FALLBACK)
    cancel_open(plan, {Kind.FALLBACK, Kind.EXPAND}, "a person engaged the fallback", actor=actor)
    action = new_action(plan, Kind.FALLBACK, state=ActionState.SCHEDULED, actor=actor, executor=plan.executor,
                        handling="direct", reason=reason, parameters={"mode": mode})
    audit.record(actor, "rollout.fallback_requested", plan,
                 data=action_data(action, mode=mode, executor=plan.executor), reason=reason)
    return action


@transaction.atomic
def roll_back(plan_id: int, *, actor: Any, reason: str) -> RolloutAction:
    """Ask the executor to return every segment to the stable version (rollback duty).

    Audit: `rollout.rollback_requested`; `rollout.rolled_back` when the executor succeeds.
    """
    plan = lock_plan(plan_id)
    _require_duty(actor, plan, Kind.ROLLBACK)
    reason = clean_reason(reason, required=True, what="Say why the release is rolled back")
    require(plan.is_live, "conflict",
            f"Only a live rollout can be rolled back; this one is {plan.get_state_display()}.")
    _require_no_containment_running(plan, Kind.ROLLBACK)
    cancel_open(plan, {Kind.ROLLBACK, Kind.FALLBACK, Kind.EXPAND}, "a person rolled the release back", actor=actor)
    action = new_action(plan, Kind.ROLLBACK, state=ActionState.SCHEDULED, actor=actor, executor=plan.executor,
                        handling="direct", reason=reason, parameters={"to_version": plan.stable_version})
    audit.record(actor, "rollout.rollback_requested", plan,
                 data=action_data(action, to_version=plan.stable_version, executor=plan.executor), reason=reason)
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
