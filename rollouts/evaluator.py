"""The evaluator: reads a live plan's signals through the pure rules of rollouts.evaluation and
acts on what they find, once.

Lost signals are recorded and restored ones closed (rollouts.signals); a decision to roll back,
fall back or expand becomes a proposal (rollouts.proposals) unless the same finding is already
open or a person turned it down within the cool-down. It writes only through those services and
has no audit events of its own. The health it finds is left in the cache for the dashboards'
readers (rollouts.health). Runs are scheduled, debounced, by rollouts.messages.
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta

from django.conf import settings

from core import clock
from core.errors import TransitionRefused
from rollouts import evaluation, health, messages, selectors
from rollouts.actions import ActionState, Kind, Origin
from rollouts.models import RolloutPlan
from rollouts.proposals import propose_action
from rollouts.signals import record_signals_lost, restore_signals

log = logging.getLogger(__name__)

# Cancelled proposals that start the re-proposal cool-down: only a person's verdict does.
REJECTED_BY_A_PERSON = ("rejected", "overridden")


def _held_back(plan: RolloutPlan, decision: evaluation.Decision, now: datetime) -> str:
    """Why the same finding must not be proposed again now ("" when it may be).

    Expansion: any cancelled proposal from this ring within ROLLOUT_REPROPOSE_COOLDOWN_SECONDS.
    Rollback and fallback: only one a person rejected or overrode within the cool-down (an
    expired or cancelled request is not a rejection), and not even that when the breach has since
    got materially worse: the window's mean moved `reask_worse_percent` % of the threshold further
    beyond than the value the person saw."""
    cooldown = now - timedelta(seconds=settings.ROLLOUT_REPROPOSE_COOLDOWN_SECONDS)
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
    Notes when it started, before reading a sample, for `messages.evaluation_covered`, arms the check
    for the moment a trigger's signals would count as lost if nothing more arrived, and leaves the
    plan's health for the dashboards (`health.remember`).
    """
    messages.note_evaluation_started(plan_id)
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
    health.remember(plan, result)
    messages.schedule_signal_check(plan.pk, result.next_check_at)
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
