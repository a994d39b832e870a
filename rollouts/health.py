"""A rollout's health as a manager reads it at a glance on the dashboards, shared through the cache.

The evaluator leaves the health it found each time it evaluates a live plan (`remember`), so that
dashboard readers find it there instead of evaluating every live plan again; a reader who finds
none evaluates the plan itself and shares its answer for HEALTH_SECONDS. The key holds the plan's
state, ring, exposure, fallback mode and last change, so any change to the plan asks afresh at once.
"""

from __future__ import annotations

import logging
from datetime import datetime

from django.conf import settings
from django.core.cache import cache

from rollouts import evaluation, selectors
from rollouts.models import RolloutPlan

log = logging.getLogger(__name__)

HEALTH_SECONDS = 15  # how long dashboard readers share the health one of them evaluated
CLOSED = {RolloutPlan.State.COMPLETED: ("completed", "ok"), RolloutPlan.State.ROLLED_BACK: ("rolled back", "danger"),
          RolloutPlan.State.DRAFT: ("not started", ""), RolloutPlan.State.READY: ("ready to start", "")}


def key(plan: RolloutPlan) -> str:
    return (f"rollouts:dashboard-health:{plan.pk}:{plan.state}:{plan.current_ring}:{plan.exposure_override}:"
            f"{plan.active_fallback_mode}:{plan.updated_at.timestamp()}")


def verdict(plan: RolloutPlan, checks: selectors.PlanEvaluation) -> tuple[str, str]:
    """A live plan's short verdict from its evaluation, and its colour (ok, warn, danger)."""
    fired = [c for c in checks.triggers if c.status == evaluation.FIRED]
    if fired:
        return "breaching: " + "; ".join(c.rule for c in fired), "danger"
    lost = sorted({c.rule for c in checks.lost} | {loss.rule for loss in checks.losses})
    if lost:
        return "signals lost: " + "; ".join(lost), "danger"
    if plan.state == RolloutPlan.State.FALLBACK:
        return f"in fallback ({plan.get_active_fallback_mode_display()})", "warn"
    if plan.state == RolloutPlan.State.PAUSED:
        return "paused", "warn"
    not_met = [c.rule for c in checks.criteria if c.status == evaluation.NOT_MET]
    if not_met:
        return "criteria not met: " + "; ".join(not_met), "warn"
    if any(c.status == evaluation.INCONCLUSIVE for c in (*checks.triggers, *checks.criteria)):
        return "waiting for enough samples", "warn"
    return "healthy: every trigger holds, every criterion met", "ok"


def remember(plan: RolloutPlan, checks: selectors.PlanEvaluation) -> None:
    """Leave the health of the evaluator's reading of a live plan for the dashboards' readers.

    It lasts until the next beat evaluation has had HEALTH_SECONDS to replace it, so a reader
    between two evaluations finds it warm; signals and lost-signal checks evaluate sooner."""
    try:
        cache.set(key(plan), list(verdict(plan, checks)),
                  timeout=round(HEALTH_SECONDS + settings.ROLLOUT_EVALUATION_SECONDS))
    except Exception:  # a cache outage costs readers time, never the evaluation
        log.warning("health of rollout plan %s not shared", plan.pk, exc_info=True)


def health_of(plan: RolloutPlan, now: datetime) -> tuple[str, str]:
    """The plan's verdict and colour: a closed plan's from its state; a live plan's as the
    evaluator or another reader left it, else evaluated now and shared for HEALTH_SECONDS."""
    if not plan.is_live:
        return CLOSED[plan.state]
    try:
        cached = cache.get(key(plan))
    except Exception:  # a cache outage costs time, never the answer
        cached = None
    if cached is not None:
        return tuple(cached)
    health = verdict(plan, selectors.evaluate(plan, now, count_late=False))
    try:
        cache.set(key(plan), list(health), timeout=HEALTH_SECONDS)
    except Exception:  # noqa: S110  (the answer stands without the cache)
        pass
    return health
