"""Reads the rollout pages, the API and the evaluation need; scope applied in one place."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, replace
from datetime import datetime, timedelta

from django.contrib.auth.models import AbstractBaseUser
from django.db import connection
from django.db.models import Avg, Count, Max, Min, Q, QuerySet

from audit.models import AuditEvent
from governance.models import ContainmentAssignment, ServiceAccount, Workflow
from governance.permissions import CONTAIN, MANAGE_ROLLOUTS, Role, perm
from governance.selectors import workflows_visible_to, workflows_with_perm
from rollouts import evaluation
from rollouts.models import (
    DUTY_FOR_ACTION,
    ContextTag,
    Metric,
    RollbackTrigger,
    RolloutAction,
    RolloutPlan,
    Signal,
    SignalLoss,
)

Live = RolloutPlan.State


def plans_visible_to(user: AbstractBaseUser) -> QuerySet[RolloutPlan]:
    return RolloutPlan.objects.filter(workflow__in=workflows_visible_to(user)).select_related("workflow")


def workflows_user_manages(user: AbstractBaseUser) -> QuerySet[Workflow]:
    return workflows_with_perm(user, MANAGE_ROLLOUTS)


def live_plan(workflow: Workflow) -> RolloutPlan | None:
    return (RolloutPlan.objects.filter(workflow=workflow, state__in=RolloutPlan.LIVE_STATES)
            .select_related("workflow").first())


def may_manage(actor: object, workflow: Workflow) -> bool:
    """Release managers of the workflow (and administrators) write and start its plans."""
    if not isinstance(actor, AbstractBaseUser) or not actor.is_active:
        return False
    return (actor.is_superuser or actor.groups.filter(name=Role.ADMINISTRATOR).exists()
            or actor.has_perm(perm(MANAGE_ROLLOUTS), workflow))


def may_tag(actor: object, workflow: Workflow) -> bool:
    """Release managers, containment owners and the workflow's service accounts tag deployments."""
    if isinstance(actor, ServiceAccount):
        return actor.active and actor.workflows.filter(pk=workflow.pk).exists()
    return may_manage(actor, workflow) or (isinstance(actor, AbstractBaseUser) and actor.is_active
                                          and actor.has_perm(perm(CONTAIN), workflow))


def duties_of(user: AbstractBaseUser, workflow: Workflow) -> set[str]:
    if not getattr(user, "is_authenticated", False) or not user.is_active:
        return set()
    return set(ContainmentAssignment.objects.filter(workflow=workflow, user=user).values_list("duty", flat=True))


def holds_duty(actor: object, workflow: Workflow, kind: str) -> bool:
    """Only the owner (primary or backup) of the action's duty may take it. A service account
    acts for its owner, and only on workflows it is scoped to."""
    duty = DUTY_FOR_ACTION[kind]
    if isinstance(actor, ServiceAccount):
        return (actor.active and actor.workflows.filter(pk=workflow.pk).exists()
                and ContainmentAssignment.objects.filter(workflow=workflow, user_id=actor.owner_id, duty=duty).exists())
    return duty in duties_of(actor, workflow)


# -- readiness -------------------------------------------------------------------------------

@dataclass(frozen=True)
class ReadinessItem:
    key: str
    label: str
    ok: bool
    detail: str


def readiness(plan: RolloutPlan) -> list[ReadinessItem]:
    """Launch readiness, item by item, in the order the plan page shows them."""
    rings = list(plan.rings.all())
    criteria = list(plan.criteria.select_related("metric"))
    triggers = list(plan.triggers.select_related("metric"))
    metrics = [c.metric for c in criteria] + [t.metric for t in triggers]
    first = rings[0] if rings else None
    workflow = plan.workflow
    tiers = {workflow.autonomy_tier, workflow.off_hours_tier or workflow.autonomy_tier}
    approval_rings = [r for r in rings[1:] if r.approval_point]
    owned = set(workflow.containment.values_list("duty", flat=True))
    missing_duties = [d.value.replace("_", " ") for d in ContainmentAssignment.Duty if d.value not in owned]
    return [
        ReadinessItem("first_segment", "First segment", bool(first and first.order == 0 and first.segment_value),
                      f"ring 0: {first.get_segment_kind_display()} {first.segment_value}, {first.exposure_percent} %"
                      if first else "Add ring 0: the first, narrow segment."),
        ReadinessItem("expansion_criteria", "Expansion criteria", bool(criteria),
                      "; ".join(str(c) for c in criteria) or "Add the signals that must hold before the next ring."),
        ReadinessItem("rollback_triggers", "Rollback triggers", bool(triggers),
                      "; ".join(str(t) for t in triggers) or "Add the signals that roll the release back."),
        ReadinessItem("fallback_mode", "Fallback mode", bool(plan.fallback_mode),
                      plan.get_fallback_mode_display() if plan.fallback_mode
                      else "Choose what users get when AI behaviour weakens."),
        ReadinessItem("cost_threshold", "Cost threshold", any(m.is_cost for m in metrics),
                      ", ".join(sorted({m.slug for m in metrics if m.is_cost}))
                      or "Add a criterion or trigger on a cost metric."),
        ReadinessItem("latency_threshold", "Latency threshold", any(m.is_latency for m in metrics),
                      ", ".join(sorted({m.slug for m in metrics if m.is_latency}))
                      or "Add a criterion or trigger on a latency metric."),
        ReadinessItem("approval_points", "Approval points", bool(approval_rings) or min(tiers) >= 2,
                      ", ".join(f"ring {r.order} waits for a person" for r in approval_rings)
                      or ("every expansion needs an approval (tier ≥ 2)" if min(tiers) >= 2
                          else "Mark a ring after the first as an approval point "
                               "(the workflow is autonomous at tier 1).")),
        ReadinessItem("containment", "Containment owner for every duty", not missing_duties,
                      "every duty has an owner" if not missing_duties
                      else f"No owner for: {', '.join(missing_duties)}."),
    ]


def missing_for_launch(plan: RolloutPlan) -> list[ReadinessItem]:
    return [item for item in readiness(plan) if not item.ok]


# -- context tags and evaluation -------------------------------------------------------------

def tags_in_force(workflow: Workflow, plan: RolloutPlan | None, at: datetime) -> QuerySet[ContextTag]:
    scope = Q(plan__isnull=True) | (Q(plan=plan) if plan is not None else Q(pk__in=[]))
    return (ContextTag.objects.filter(scope, workflow=workflow, withdrawn_at__isnull=True, starts_at__lte=at,
                                      ends_at__gt=at)
            .select_related("metric", "author", "author_service").order_by("starts_at", "id"))


def as_evaluation_tag(tag: ContextTag) -> evaluation.Tag:
    return evaluation.Tag(
        id=tag.pk, label=tag.label, kind=tag.kind, metric=tag.metric.slug if tag.metric_id else None,
        percent=float(tag.expected_change_percent) if tag.expected_change_percent is not None else None,
        reason=tag.reason, author=tag.author_label,
    )


def window_stats(plan_id: int, metric_id: int, start: datetime, end: datetime) -> evaluation.WindowStats:
    """Statistics of (start, end] computed by the database over the (plan, metric, time) index;
    samples too late to count are left out."""
    row = Signal.objects.filter(plan_id=plan_id, metric_id=metric_id, observed_at__gt=start, observed_at__lte=end,
                                late=False).aggregate(
        count=Count("pk"), mean=Avg("value"), minimum=Min("value"), maximum=Max("value"),
        first_at=Min("observed_at"), last_at=Max("observed_at"),
    )
    return evaluation.WindowStats(count=row["count"], mean=row["mean"], minimum=row["minimum"], maximum=row["maximum"],
                                  first_at=row["first_at"], last_at=row["last_at"])


def as_evaluation_trigger(trigger: RollbackTrigger, threshold: float | None = None) -> evaluation.Trigger:
    return evaluation.Trigger(
        trigger.pk, trigger.metric.slug, trigger.operator, float(trigger.threshold if threshold is None else threshold),
        trigger.sustained_for, trigger.min_samples, trigger.severity, statistic=trigger.breach_statistic,
        breach_share=float(trigger.breach_share), flap_windows=trigger.flap_windows,
        flap_breaches=trigger.flap_breaches, no_data_after=trigger.effective_no_data_after,
    )


SQL_OPERATOR = {"gt": ">", "gte": ">=", "lt": "<", "lte": "<="}


def trigger_samples(plan: RolloutPlan, trigger: RollbackTrigger, rule: evaluation.Trigger,
                    thresholds: tuple[float, ...], now: datetime, lateness: timedelta, *,
                    count_late: bool = True) -> evaluation.TriggerSamples:
    """What `evaluation.evaluate_trigger` reads. On PostgreSQL, three indexed statements: the newest
    samples (the watermark, and the longer window sparse data uses), one aggregate grouping the
    windows the flapping rule reads, and the latest receive times (plus the late samples' count,
    for the pages). Elsewhere the rows themselves go through `evaluation.collect`, the reference
    the aggregates are tested against."""
    m, span, no_data = rule.min_samples, rule.sustained_for, rule.no_data
    counted = Signal.objects.filter(plan_id=plan.pk, metric_id=trigger.metric_id, late=False)
    late = (Signal.objects.filter(plan_id=plan.pk, metric_id=trigger.metric_id, late=True).count()
            if count_late else 0)
    newest = list(counted.filter(observed_at__lte=now).order_by("-observed_at")
                  .values_list("observed_at", "value")[:m])
    watermark = newest[0][0] if newest else now
    # A counted sample was received at most its metric's allowed lateness after it was measured, so
    # one received within `no_data_after` was measured after this: the index bounds the scan.
    received_floor = now - no_data - lateness
    if connection.vendor != "postgresql":
        floor = min(watermark - rule.windows_needed * span, watermark - no_data, received_floor)
        rows = counted.filter(observed_at__gt=floor, observed_at__lte=now + timedelta(days=1)).values_list(
            "observed_at", "value", "received_at")
        data = evaluation.collect(rule, rows, now=now, thresholds=thresholds, watching_since=plan.started_at)
        return replace(data, late=late)
    newest = [(at, value) for at, value in newest if at > watermark - no_data]
    operator = SQL_OPERATOR[rule.operator]
    beyond = ", ".join(f"count(*) FILTER (WHERE value {operator} %s)" for _ in thresholds)
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT floor(extract(epoch FROM (%s - observed_at)) / %s)::int, count(*), sum(value), "
            f"{beyond} FROM rollouts_signal WHERE plan_id = %s AND metric_id = %s AND NOT late "
            "AND observed_at > %s AND observed_at <= %s GROUP BY 1",
            [watermark, span.total_seconds(), *thresholds, plan.pk, trigger.metric_id,
             watermark - rule.windows_needed * span, watermark])
        buckets = {row[0]: row[1:] for row in cursor.fetchall()}
        cursor.execute(
            "SELECT received_at FROM rollouts_signal WHERE plan_id = %s AND metric_id = %s AND NOT late "
            "AND observed_at > %s AND received_at <= %s ORDER BY received_at DESC LIMIT %s",
            [plan.pk, trigger.metric_id, received_floor, now, m])
        received = tuple(row[0] for row in cursor.fetchall())
    windows = []
    for i in range(rule.windows_needed):
        count, total, *counts = buckets.get(i) or (0, 0.0, *(0 for _ in thresholds))
        windows.append(evaluation.Window(watermark - (i + 1) * span, watermark - i * span, count, total or 0.0,
                                         tuple(counts)))
    return evaluation.TriggerSamples(now, watermark, thresholds, tuple(windows), tuple(newest), received,
                                     plan.started_at, late)


def lateness_by_metric(triggers: list[RollbackTrigger]) -> dict[int, timedelta]:
    """Each metric's allowed lateness in a plan: the largest of its triggers' (metrics without a
    trigger: DEFAULT_ALLOWED_LATENESS)."""
    most: dict[int, timedelta] = {}
    for t in triggers:
        most[t.metric_id] = max(most.get(t.metric_id, t.allowed_lateness), t.allowed_lateness)
    return most


def open_losses(plan: RolloutPlan) -> QuerySet[SignalLoss]:
    return plan.signal_losses.filter(restored_at__isnull=True).select_related("metric").order_by("detected_at")


def recent_losses(plan: RolloutPlan, limit: int = 10) -> QuerySet[SignalLoss]:
    return plan.signal_losses.select_related("metric").order_by("-detected_at", "-id")[:limit]


@dataclass(frozen=True)
class PlanEvaluation:
    at: datetime
    tier: int
    business_hours: bool
    criteria: tuple[evaluation.Check, ...]
    triggers: tuple[evaluation.Check, ...]
    tags: tuple[ContextTag, ...]
    decision: evaluation.Decision
    soak_complete: bool
    soak_ends_at: datetime | None
    losses: tuple[SignalLoss, ...] = ()
    # The earliest moment a trigger would count as "signals lost" if nothing more arrived.
    next_check_at: datetime | None = None

    @property
    def lost(self) -> tuple[evaluation.Check, ...]:
        return tuple(c for c in self.triggers if c.lost)


def evaluate(plan: RolloutPlan, at: datetime, *, count_late: bool = True) -> PlanEvaluation:
    """Every criterion and trigger of a plan against its signals now, and what that calls for.

    Criteria count samples from this ring's opening and from the end of the last signal loss on,
    and none from a metric quiet for longer than the plan's shortest `no_data_after`. The count of
    late samples is for the pages (`count_late`); evaluation itself never reads them."""
    workflow = plan.workflow
    business = workflow.in_business_hours(at)
    tier = workflow.tier_at(at)
    tags = tuple(tags_in_force(workflow, plan, at))
    eval_tags = [as_evaluation_tag(t) for t in tags]
    rings = list(plan.rings.all())
    ring = next((r for r in rings if r.order == plan.current_ring), None)
    opened = plan.ring_opened_at
    triggers = list(plan.triggers.select_related("metric"))
    losses = tuple(open_losses(plan)) if plan.pk else ()
    restored = (plan.signal_losses.filter(restored_at__isnull=False).aggregate(last=Max("restored_at"))["last"]
                if plan.pk else None)
    quiet = min((t.effective_no_data_after for t in triggers), default=None)
    lateness = lateness_by_metric(triggers)
    criteria_checks, trigger_checks = [], []
    for c in plan.criteria.select_related("metric"):
        rule = evaluation.Criterion(c.pk, c.metric.slug, c.operator, float(c.threshold), c.window, c.min_samples)
        start = max(at - c.window, *(t for t in (opened, restored) if t is not None))
        check = evaluation.evaluate_criterion(rule, window_stats(plan.pk, c.metric_id, start, at), start=start, end=at,
                                              fresh_after=at - quiet if quiet is not None else None)
        if losses and check.status == evaluation.MET:
            check = replace(check, status=evaluation.INCONCLUSIVE, note="signals lost: nothing counts as met until "
                                                                        "samples are back")
        criteria_checks.append(check)
    next_check_at = None
    for t in triggers:
        threshold = t.threshold if business or t.off_hours_threshold is None else t.off_hours_threshold
        rule = as_evaluation_trigger(t, threshold)
        thresholds = evaluation.thresholds_for(rule, eval_tags)
        samples = trigger_samples(plan, t, rule, thresholds, at, lateness[t.metric_id], count_late=count_late)
        check = evaluation.evaluate_trigger(rule, samples, eval_tags)
        trigger_checks.append(check)
        if check.lost_at is not None and (next_check_at is None or check.lost_at < next_check_at):
            next_check_at = check.lost_at
    soak_ends_at = opened + ring.min_soak if ring is not None and opened is not None else None
    soak_complete = soak_ends_at is not None and at >= soak_ends_at
    next_ring = next((r for r in rings if plan.current_ring is not None and r.order == plan.current_ring + 1), None)
    lost_rules = {c.rule for c in trigger_checks if c.lost} | {loss.rule for loss in losses}
    situation = evaluation.Situation(
        state=plan.state, tier=tier, soak_complete=soak_complete, has_next_ring=next_ring is not None,
        next_ring_is_approval_point=bool(next_ring and next_ring.approval_point),
        signals_lost=tuple(sorted(lost_rules)),
    )
    decision = (evaluation.decide(situation, criteria_checks, trigger_checks) if plan.is_live
                else evaluation.Decision("none", reason=f"the plan is {plan.get_state_display()}",
                                         checks=(*trigger_checks, *criteria_checks)))
    return PlanEvaluation(at, tier, business, tuple(criteria_checks), tuple(trigger_checks), tags, decision,
                          soak_complete, soak_ends_at, losses, next_check_at)


# -- the route an agent's next call takes ----------------------------------------------------

NORMAL = "normal"


def _bucket(plan_id: int, key: str) -> int:
    digest = hashlib.sha256(f"{plan_id}:{key}".encode()).digest()
    return int.from_bytes(digest[:4], "big") % 100


def current_route(workflow: Workflow, segment_kind: str, segment_value: str, key: str = "") -> dict:
    """Which version and mode serve a segment now.

    Exposed segments (rings up to the current one) get the release; with a `key` (a user or
    account id) the ring's exposure percent is applied by a stable hash of the key, without one
    the caller receives the percent to apply. A plan in fallback serves its fallback mode to
    exposed segments; a rolled-back plan serves the stable version to everyone.
    """
    plan = live_plan(workflow)
    if plan is None:
        last = (RolloutPlan.objects.filter(workflow=workflow, state__in=[Live.COMPLETED, Live.ROLLED_BACK])
                .order_by("-closed_at", "-id").first())
        if last is None:
            return {"workflow": workflow.slug, "plan": None, "state": None, "version": None, "mode": NORMAL,
                    "exposed": False, "exposure_percent": 0, "ring": None, "workflow_paused": workflow.paused}
        version = last.release_version if last.state == Live.COMPLETED else last.stable_version
        return {"workflow": workflow.slug, "plan": last.pk, "state": last.state, "version": version, "mode": NORMAL,
                "exposed": last.state == Live.COMPLETED, "exposure_percent": 100 if last.state == Live.COMPLETED else 0,
                "ring": None, "workflow_paused": workflow.paused}
    rings = [r for r in plan.rings.all() if r.order <= plan.current_ring]
    matching = [r for r in rings if r.matches(segment_kind, segment_value)]
    # The most specific ring that matches wins: a named segment over a traffic slice.
    ring = max(matching, key=lambda r: (r.segment_kind != r.SegmentKind.TRAFFIC_SLICE, r.order), default=None)
    exposure = 0
    if ring is not None:
        exposure = ring.exposure_percent
        if plan.exposure_override is not None and ring.order == plan.current_ring:
            exposure = min(exposure, plan.exposure_override)
    exposed = exposure > 0 and (not key or _bucket(plan.pk, key) < exposure)
    version, mode = (plan.release_version, NORMAL) if exposed else (plan.stable_version, NORMAL)
    if exposed and plan.state == Live.FALLBACK:
        mode = plan.active_fallback_mode
        if mode == "previous_version":
            version = plan.stable_version
    return {"workflow": workflow.slug, "plan": plan.pk, "state": plan.state, "version": version, "mode": mode,
            "exposed": exposed, "exposure_percent": exposure, "ring": ring.order if ring else None,
            "workflow_paused": workflow.paused}


# -- what the plan page lists ----------------------------------------------------------------

def open_actions(plan: RolloutPlan) -> QuerySet[RolloutAction]:
    return plan.actions.filter(state__in=RolloutAction.OPEN_STATES).select_related(
        "requested_by", "requested_by_service", "trigger__metric", "approval_request").order_by("created_at")


def recent_actions(plan: RolloutPlan, limit: int = 20) -> QuerySet[RolloutAction]:
    return (plan.actions.select_related("requested_by", "requested_by_service", "approval_request")
            .prefetch_related("attempt_log").order_by("-created_at", "-id")[:limit])


def fallback_exit(plan: RolloutPlan) -> RolloutAction | None:
    """While a plan is in fallback: the request to leave it, if the executor is still on it or it failed.

    Only a successful exit (or a rollback) ends a fallback, so the latest resume is this fallback's."""
    if plan.state != Live.FALLBACK:
        return None
    last = plan.actions.filter(kind=RolloutAction.Kind.RESUME).order_by("-created_at", "-id").first()
    if last is not None and (last.is_open or last.state == RolloutAction.State.FAILED):
        return last
    return None


def metric_ids(slugs: set[str]) -> dict[str, int]:
    return dict(Metric.objects.filter(slug__in=slugs).values_list("slug", "pk"))


@dataclass(frozen=True)
class Available:
    action: str
    label: str
    style: str
    needs: tuple[str, ...] = ()  # which fields of the containment form it uses


def available_actions(plan: RolloutPlan, user: AbstractBaseUser, exit_running: bool = False) -> list[Available]:
    """The containment actions this person may take now: they hold the duty and the state allows it
    (`exit_running`: the executor is already taking the plan out of its fallback)."""
    if not plan.is_live:
        return []
    duties = duties_of(user, plan.workflow)
    state = plan.state
    last = max((r.order for r in plan.rings.all()), default=0)
    ring = next((r for r in plan.rings.all() if r.order == plan.current_ring), None)
    exposure = (min(ring.exposure_percent, plan.exposure_override if plan.exposure_override is not None else 100)
                if ring else 0)
    offered = [
        (state == Live.ACTIVE and plan.current_ring < last, "expand",
         Available("expand", f"Open ring {plan.current_ring + 1}", "primary", ("reason",))),
        (state == Live.ACTIVE and plan.current_ring == last, "complete",
         Available("complete", "Complete the rollout", "primary", ("reason",))),
        (state == Live.ACTIVE, "pause", Available("pause", "Pause", "warn", ("reason",))),
        (state == Live.PAUSED, "resume", Available("resume", "Resume", "primary", ("reason",))),
        (state == Live.FALLBACK and not exit_running, "fallback_exit",
         Available("resume", "Leave the fallback mode", "primary", ("reason",))),
        (plan.current_ring > 0 or exposure > 0, "narrow",
         Available("narrow", "Narrow exposure", "warn", ("reason", "to_ring", "exposure_percent"))),
        (state in (Live.ACTIVE, Live.PAUSED), "fallback",
         Available("fallback", "Engage fallback", "warn", ("reason", "mode"))),
        (True, "rollback", Available("rollback", "Roll back", "danger", ("reason",))),
    ]
    duty_of = {"fallback_exit": "fallback"}
    allowed = []
    for ok, key, available in offered:
        kind = duty_of.get(key, key)
        if ok and DUTY_FOR_ACTION[kind] in duties:
            allowed.append(available)
    return allowed


def plan_events(plan: RolloutPlan, limit: int = 25) -> QuerySet[AuditEvent]:
    return (AuditEvent.objects.filter(subject_type="rollouts.rolloutplan", subject_id=str(plan.pk))
            .order_by("-seq")[:limit])


# -- metrics ---------------------------------------------------------------------------------

def all_metrics() -> QuerySet[Metric]:
    """Built-in metrics first, then the custom ones, each by slug."""
    return Metric.objects.order_by("-builtin", "slug")


def custom_metric(slug: str) -> Metric | None:
    return Metric.objects.filter(slug=slug, builtin=False).first() if slug else None


def may_define_metrics(user: AbstractBaseUser) -> bool:
    """Who define_metric lets register metrics: administrators and release managers."""
    return user.is_active and (user.is_superuser or user.groups.filter(name__in=[Role.ADMINISTRATOR,
                                                                              Role.RELEASE_MANAGER]).exists())
