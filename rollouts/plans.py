"""Rollout plans: what release managers write, launching them, and the plan's own state machine.

`move_plan` is the only way a plan changes state once it is launched (`RolloutPlan.TRANSITIONS`);
the services that move it write the audit event. Each service here locks the plan, checks, changes
and audits in one transaction.

Audit actions: `rollout.plan_created` (create_plan), `rollout.plan_updated` (update_plan),
`rollout.plan_ready` (mark_ready, start_rollout of a draft), `rollout.started` (start_rollout).
"""

from __future__ import annotations

from typing import Any

from django.contrib.auth.models import AbstractBaseUser
from django.core.exceptions import ValidationError
from django.db import transaction

from audit import log as audit
from core import clock
from core.errors import TransitionRefused, require
from governance.models import Workflow
from rollouts import selectors
from rollouts.models import ExpansionCriterion, Ring, RollbackTrigger, RolloutPlan

PlanState = RolloutPlan.State

AUDIT_ACTIONS = ("rollout.plan_created", "rollout.plan_updated", "rollout.plan_ready", "rollout.started")

PLAN_FIELDS = ("name", "release_version", "stable_version", "fallback_mode", "executor", "webhook_url", "notes")
RING_FIELDS = ("segment_kind", "segment_value", "exposure_percent", "min_soak", "approval_point")
CRITERION_FIELDS = ("metric", "operator", "threshold", "window", "min_samples")
TRIGGER_FIELDS = ("metric", "operator", "threshold", "off_hours_threshold", "sustained_for", "min_samples", "severity",
                  "breach_statistic", "breach_share", "flap_windows", "flap_breaches", "allowed_lateness",
                  "no_data_after", "on_no_data", "reask_worse_percent", "on_silence")


def lock_plan(plan_id: int) -> RolloutPlan:
    plan = RolloutPlan.objects.select_for_update(of=("self",)).select_related("workflow").filter(pk=plan_id).first()
    require(plan is not None, "not_found", "This rollout plan does not exist.")
    return plan


def move_plan(plan: RolloutPlan, new_state: str, **fields: Any) -> str:
    """Change the locked plan's state (refused unless `RolloutPlan.TRANSITIONS` allows it) and the
    fields that go with it; returns the state it left. The caller writes the audit event."""
    require(plan.can_become(new_state), "conflict",
            f"A {plan.get_state_display()} rollout cannot become {RolloutPlan.State(new_state).label}.")
    old = plan.state
    plan.state = new_state
    for name, value in fields.items():
        setattr(plan, name, value)
    plan.save(update_fields=["state", *fields, "updated_at"])
    return old


def open_next_ring(plan: RolloutPlan) -> dict:
    """Move an active, locked plan to its next ring; returns the ring for the caller's audit event."""
    nxt = plan.current_ring + 1
    ring = plan.rings.filter(order=nxt).first()
    require(ring is not None, "conflict", "This rollout is at its last ring; complete it instead.")
    require(plan.state == PlanState.ACTIVE, "conflict",
            f"Only an active rollout can expand; this one is {plan.get_state_display()}.")
    plan.current_ring, plan.ring_opened_at, plan.exposure_override = nxt, clock.now(), None
    plan.save(update_fields=["current_ring", "ring_opened_at", "exposure_override", "updated_at"])
    return {"ring": nxt, "segment": ring.segment, "exposure_percent": ring.exposure_percent}


# -- plan editing (release managers) ----------------------------------------------------------

def validated(instance: Any, prefix: str, exclude: list[str] | None = None) -> None:
    """Model validation as a refusal naming the field (`rings[0].exposure_percent`)."""
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
            validated(obj, f"{prefix}[{index}].", exclude=["plan"])
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
    validated(plan, "", exclude=["created_by"])
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
    plan = lock_plan(plan_id)
    require(selectors.may_manage(actor, plan.workflow), "forbidden",
            f"You may not edit rollout plans of {plan.workflow.slug}.")
    require(plan.is_editable, "conflict", f"A {plan.get_state_display()} plan can no longer be edited.")
    unknown = set(fields) - set(PLAN_FIELDS)
    require(not unknown, "invalid", f"Unknown plan fields: {', '.join(sorted(unknown))}.")
    before = _summary(plan)
    for name, value in fields.items():
        setattr(plan, name, value)
    validated(plan, "")
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
    plan = lock_plan(plan_id)
    require(selectors.may_manage(actor, plan.workflow), "forbidden",
            f"You may not manage rollouts of {plan.workflow.slug}.")
    require(plan.state == PlanState.DRAFT, "conflict", f"This plan is already {plan.get_state_display()}.")
    _require_launchable(plan)
    move_plan(plan, PlanState.READY)
    audit.record(actor, "rollout.plan_ready", plan, data={"checklist": [i.key for i in selectors.readiness(plan)]})
    return plan


@transaction.atomic
def start_rollout(plan_id: int, *, actor: AbstractBaseUser) -> RolloutPlan:
    """Ready (or a draft that passes readiness) → active at ring 0.

    Readiness is checked again (an owner may have been removed since). One live plan per workflow.
    Audit: `rollout.plan_ready` (when starting a draft), `rollout.started`.
    """
    plan = lock_plan(plan_id)
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
        move_plan(plan, PlanState.READY)
        audit.record(actor, "rollout.plan_ready", plan, data={"checklist": [i.key for i in selectors.readiness(plan)]})
    now = clock.now()
    move_plan(plan, PlanState.ACTIVE, current_ring=0, ring_opened_at=now, started_at=now)
    ring = plan.rings.get(order=0)
    audit.record(actor, "rollout.started", plan,
                 data={"ring": 0, "segment": ring.segment, "exposure_percent": ring.exposure_percent,
                       "release_version": plan.release_version, "stable_version": plan.stable_version})
    return plan


