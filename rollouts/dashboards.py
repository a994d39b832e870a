"""The managers' dashboards: how every rollout in scope is doing, without asking anyone.

Read-only. Every number is computed from the workflows the person may see (auditors: all): the
overview of rollouts with their ring, state and health; SLA health of the approval queue;
false-positive rollbacks from post-facto reviews and override reasons; time to containment. Per
plan: each signal against its thresholds with ring boundaries and context-tag windows, and the
exposure by ring. Each chart has its numbers as a table and a CSV download.
"""

from __future__ import annotations

import statistics
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from functools import cached_property

from django.contrib.auth.decorators import login_required
from django.db import connection
from django.db.models import (
    Aggregate,
    Avg,
    Count,
    Exists,
    FloatField,
    Max,
    Min,
    OuterRef,
    Q,
    QuerySet,
    Subquery,
    Value,
)
from django.db.models.expressions import RawSQL
from django.db.models.fields.json import KeyTextTransform
from django.db.models.functions import Coalesce, TruncDate, TruncDay, TruncHour, TruncMinute
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import render
from django.views.decorators.http import require_GET

from approvals.models import ApprovalRequest, Decision
from audit.models import AuditEvent
from core import clock, denials
from governance.models import Workflow
from governance.selectors import audit_events_visible_to, workflows_visible_to
from rollouts import charts, evaluation, retention, review_signals, selectors
from rollouts.health import health_of
from rollouts.models import ActionReview, ContextTag, Metric, RolloutAction, RolloutPlan, Signal

PERIODS = (7, 30, 90)
RAW_POINTS = 1500  # up to this many samples are drawn one by one; more are averaged per time bucket
CONTAINMENT_KINDS = (RolloutAction.Kind.ROLLBACK, RolloutAction.Kind.FALLBACK)
DECIDED_BY_A_PERSON = (ApprovalRequest.State.APPROVED, ApprovalRequest.State.REJECTED, ApprovalRequest.State.OVERRIDDEN)
TIME_LEFT = [  # (label, upper bound in seconds)
    ("overdue", 0), ("< 1 min", 60), ("1–5 min", 300), ("5–15 min", 900), ("15–60 min", 3600), ("> 1 h", None)]
BREACHING = {"gt": "value__gt", "gte": "value__gte", "lt": "value__lt", "lte": "value__lte"}
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
RING_EVENTS = ("rollout.started", "rollout.ring_opened", "rollout.narrowed", "rollout.rolled_back",
               "rollout.fallback_engaged")


@dataclass(frozen=True)
class Scope:
    """What a dashboard counts: the person's workflows over the last `days` days."""

    user: object
    days: int
    now: datetime

    @property
    def start(self) -> datetime:
        return self.now - timedelta(days=self.days)

    @property
    def workflows(self) -> QuerySet[Workflow]:
        return workflows_visible_to(self.user)

    @cached_property
    def workflow_ids(self) -> list[int]:
        """The workflows in scope, read once per page (each chart filters by them)."""
        return list(self.workflows.values_list("pk", flat=True))


def scope_of(request: HttpRequest) -> Scope:
    try:
        days = int(request.GET.get("days", 30))
    except ValueError:
        days = 30
    return Scope(request.user, days if days in PERIODS else 30, clock.now())


def _day(value: datetime) -> date:
    return value.date()


def _quantile(values: list[float], q: float) -> float:
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[round(q * 100) - 1]


# --- the overview of rollouts --------------------------------------------------------------------

@dataclass(frozen=True)
class PlanRow:
    plan: RolloutPlan
    ring: str
    exposure: int | None
    health: str
    style: str
    last_signal: datetime | None


def plan_row(plan: RolloutPlan, now: datetime) -> PlanRow:
    rings = list(plan.rings.all())
    ring = next((r for r in rings if r.order == plan.current_ring), None)
    exposure = None
    if ring is not None and plan.is_live:
        exposure = min(ring.exposure_percent, plan.exposure_override if plan.exposure_override is not None else 100)
    label = f"ring {ring.order} of {len(rings) - 1} · {ring.segment}" if ring else "—"
    if ring is not None and not plan.is_live:
        label = f"reached {label}"
    health, style = health_of(plan, now)
    return PlanRow(plan, label, exposure, health, style, getattr(plan, "last_signal", None))


def _last_signal() -> Subquery:
    """A plan's newest sample: the newest of each metric's, each one backward step of the signals'
    (plan, metric, time) index, instead of a scan of every sample the plan ever had."""
    newest_of_metric = (Signal.objects.filter(plan_id=OuterRef(OuterRef("pk")), metric_id=OuterRef("pk"))
                        .order_by("-observed_at").values("observed_at")[:1])
    newest = (Metric.objects.annotate(last=Subquery(newest_of_metric)).filter(last__isnull=False)
              .order_by("-last").values("last")[:1])
    return Subquery(newest)


def _plans(user) -> QuerySet[RolloutPlan]:
    return (selectors.plans_visible_to(user).annotate(last_signal=_last_signal())
            .prefetch_related("rings").order_by("workflow__slug", "-created_at"))


def plan_rows(scope: Scope) -> list[PlanRow]:
    rows = [plan_row(plan, scope.now) for plan in _plans(scope.user)]
    live_first = {RolloutPlan.State.FALLBACK: 0, RolloutPlan.State.ACTIVE: 1, RolloutPlan.State.PAUSED: 1}
    return sorted(rows, key=lambda r: live_first.get(r.plan.state, 2))


def overview_chart(rows: list[PlanRow]) -> charts.Chart:
    live = [r for r in rows if r.plan.is_live]
    return charts.bars(
        "rollouts", "Exposure of live rollouts", [f"{r.plan.workflow.slug} {r.plan.release_version}" for r in live],
        {"exposure %": [r.exposure or 0 for r in live]}, y_title="% of the ring's traffic",
        columns=("workflow", "release", "state", "ring", "exposure %", "health", "last signal (UTC)"),
        rows=[(r.plan.workflow.slug, r.plan.release_version, r.plan.state, r.ring, r.exposure, r.health, r.last_signal)
              for r in rows])


# --- SLA health of the approval queue ------------------------------------------------------------

def _requests(scope: Scope) -> QuerySet[ApprovalRequest]:
    return ApprovalRequest.objects.filter(workflow_id__in=scope.workflow_ids)


def sla_pending(scope: Scope) -> charts.Chart:
    counts = Counter()
    for due_at in _requests(scope).filter(state=ApprovalRequest.State.PENDING).values_list("due_at", flat=True):
        left = (due_at - scope.now).total_seconds()
        counts[next(label for label, bound in TIME_LEFT if bound is None or left < bound)] += 1
    labels = [label for label, _ in TIME_LEFT]
    return charts.bars("sla-pending", "Pending requests by time left", labels,
                       {"pending": [counts[lb] for lb in labels]},
                       y_title="requests", columns=("time left", "pending requests"),
                       rows=[(lb, counts[lb]) for lb in labels], integers=True)


def sla_breaches(scope: Scope) -> charts.Chart:
    """A breach: the first deadline ran out before anyone decided (escalated, or expired).
    Counted per UTC day by the database."""
    breached = Q(escalated_at__isnull=False) | Q(state=ApprovalRequest.State.EXPIRED)
    per_day = {row["day"]: [row["requests"], row["breaches"]] for row in (
        _requests(scope).filter(created_at__gte=scope.start).annotate(day=TruncDate("created_at", tzinfo=UTC))
        .values("day").annotate(requests=Count("pk"), breaches=Count("pk", filter=breached)).order_by("day"))}
    days = sorted(per_day)
    return charts.timeline(
        "sla-breaches", "SLA breaches per day", {"requests": (days, [per_day[d][0] for d in days]),
                                                 "breaches": (days, [per_day[d][1] for d in days])},
        modes={"requests": "lines+markers", "breaches": "bars"}, y_title="requests", integers=True,
        columns=("day", "requests", "breaches"), rows=[(d, *per_day[d]) for d in days],
        note="A breach: the first deadline ran out before anyone decided (the request escalated or expired).")


def sla_escalations(scope: Scope) -> charts.Chart:
    rows = (audit_events_visible_to(scope.user).filter(action="approval.escalated", occurred_at__gte=scope.start)
            .annotate(level=KeyTextTransform("level", "data")).values("level").annotate(n=Count("pk")))
    levels = Counter({int(row["level"]): row["n"] for row in rows if str(row["level"]).isdigit()})
    ordered = sorted(levels)
    labels = [f"level {level + 1}" for level in ordered]
    return charts.bars("sla-escalations", "Escalations per level", labels,
                       {"escalations": [levels[lv] for lv in ordered]},
                       y_title="escalations", columns=("escalated to", "escalations"),
                       rows=[(label, levels[lv]) for label, lv in zip(labels, ordered, strict=True)],
                       integers=True)


class _Percentile(Aggregate):
    """PostgreSQL's percentile_cont: linear interpolation, as statistics.quantiles(method="inclusive")."""

    function = "percentile_cont"
    template = "%(function)s(%(fraction)s) WITHIN GROUP (ORDER BY %(expressions)s)"
    output_field = FloatField()

    def __init__(self, expression: object, fraction: float) -> None:
        super().__init__(expression, fraction=float(fraction))


def _decision_minutes(scope: Scope) -> list[tuple[str, int, float, float]]:
    """(workflow, decisions, median, 90th percentile) of the minutes from request to decision."""
    closed = _requests(scope).filter(state__in=DECIDED_BY_A_PERSON, closed_at__gte=scope.start)
    if connection.vendor == "postgresql":
        minutes = RawSQL('EXTRACT(EPOCH FROM ("approvals_approvalrequest"."closed_at" - '
                         '"approvals_approvalrequest"."created_at")) / 60.0', [])
        rows = (closed.values("workflow__slug").annotate(n=Count("pk"), median=_Percentile(minutes, 0.5),
                                                         p90=_Percentile(minutes, 0.9)).order_by("workflow__slug"))
        return [(r["workflow__slug"], r["n"], r["median"], r["p90"]) for r in rows]
    per_workflow: dict[str, list[float]] = defaultdict(list)
    for slug, created_at, closed_at in closed.values_list("workflow__slug", "created_at", "closed_at"):
        per_workflow[slug].append((closed_at - created_at).total_seconds() / 60)
    return [(slug, len(values), statistics.median(values), _quantile(values, 0.9))
            for slug, values in sorted(per_workflow.items())]


def sla_time_to_decision(scope: Scope) -> charts.Chart:
    stats = [(slug, n, round(median, 2), round(p90, 2)) for slug, n, median, p90 in _decision_minutes(scope)]
    slugs = [row[0] for row in stats]
    return charts.bars("sla-time-to-decision", "Time to decision (minutes)", slugs,
                       {"median": [row[2] for row in stats], "90th percentile": [row[3] for row in stats]},
                       y_title="minutes", columns=("workflow", "decisions", "median (min)", "90th percentile (min)"),
                       rows=stats,
                       note="From the request to the decision that closed it, for requests decided by people.")


# --- false-positive rollbacks --------------------------------------------------------------------

def _false_positive_sources(scope: Scope) -> tuple[QuerySet[ActionReview], QuerySet[Decision]]:
    """Post-facto reviews of autonomous rollbacks and fallbacks, and overrides of proposed ones."""
    reviews = ActionReview.objects.filter(workflow_id__in=scope.workflow_ids, action__kind__in=CONTAINMENT_KINDS,
                                          reviewed_at__gte=scope.start).exclude(verdict="")
    overrides = Decision.objects.filter(request__workflow_id__in=scope.workflow_ids, verdict=Decision.Verdict.OVERRIDE,
                                        request__kind__in=CONTAINMENT_KINDS, decided_at__gte=scope.start)
    return reviews, overrides


def false_positives_by_workflow(scope: Scope) -> charts.Chart:
    reviews, overrides = _false_positive_sources(scope)
    table: dict[str, Counter] = defaultdict(Counter)
    for slug, verdict, reason in reviews.values_list("workflow__slug", "verdict", "reason"):
        table[slug]["reviewed"] += 1
        table[slug][verdict] += 1
        if verdict == ActionReview.Verdict.FALSE_POSITIVE:
            table[slug][f"reason:{reason}"] += 1
    for slug, reason in overrides.values_list("request__workflow__slug", "reason"):
        table[slug]["overridden"] += 1
        table[slug][f"reason:{reason}"] += 1
    slugs = sorted(table)
    rows = []
    for slug in slugs:
        c = table[slug]
        total = c[ActionReview.Verdict.FALSE_POSITIVE] + c["overridden"]
        judged = c["reviewed"] + c["overridden"]
        reasons = ", ".join(f"{k.split(':', 1)[1]} {v}" for k, v in sorted(c.items()) if k.startswith("reason:"))
        rows.append((slug, c["reviewed"], c[ActionReview.Verdict.CORRECT], c[ActionReview.Verdict.FALSE_POSITIVE],
                     c["overridden"], total, round(100 * total / judged, 1) if judged else None, reasons))
    return charts.bars(
        "false-positives", "False-positive rollbacks by workflow", slugs,
        {"false positive (review)": [r[3] for r in rows], "overridden (override reason)": [r[4] for r in rows]},
        stacked=True, y_title="rollbacks and fallbacks", integers=True,
        columns=("workflow", "reviewed", "correct", "false positive (review)", "overridden", "false positives",
                 "false-positive rate %", "reason categories"), rows=rows,
        note="Autonomous rollbacks and fallbacks a containment owner judged a false positive, plus proposed ones a "
             "person overrode in their window, with the reason category given.")


def false_positives_over_time(scope: Scope) -> charts.Chart:
    reviews, overrides = _false_positive_sources(scope)
    per_day: dict[date, list[int]] = defaultdict(lambda: [0, 0])
    for at in reviews.filter(verdict=ActionReview.Verdict.FALSE_POSITIVE).values_list("reviewed_at", flat=True):
        per_day[_day(at)][0] += 1
    for at in overrides.values_list("decided_at", flat=True):
        per_day[_day(at)][1] += 1
    days = sorted(per_day)
    return charts.timeline(
        "false-positives-over-time", "False-positive rollbacks per day",
        {"false positive (review)": (days, [per_day[d][0] for d in days]),
         "overridden": (days, [per_day[d][1] for d in days])},
        modes={"false positive (review)": "bars", "overridden": "bars"}, y_title="rollbacks and fallbacks",
        integers=True,
        columns=("day", "false positive (review)", "overridden"), rows=[(d, *per_day[d]) for d in days])


# --- time to containment -------------------------------------------------------------------------

def breach_rule(action: RolloutAction, metric_ids: dict[str, int]) -> tuple[int, str, float] | None:
    """(metric id, operator, threshold) of the trigger behind a rollback: as its evidence kept it
    (the threshold in force), else the trigger's own."""
    rule = (action.evidence or {}).get("trigger") or {}
    metric, operator, threshold = rule.get("metric"), rule.get("operator"), rule.get("threshold")
    if (metric is None or operator not in BREACHING) and action.trigger_id:
        metric, operator, threshold = (action.trigger.metric.slug, action.trigger.operator,
                                       float(action.trigger.threshold))
    if metric is None or operator not in BREACHING or threshold is None or metric not in metric_ids:
        return None
    return metric_ids[metric], operator, float(threshold)


def first_breaching_sample(action: RolloutAction, metric_ids: dict[str, int] | None = None) -> datetime | None:
    """The first sample of the breach that led to the rollback: the start of the run of breaching
    samples of the trigger's metric that ends when the rollback was proposed."""
    rule = breach_rule(action, metric_ids or dict(Metric.objects.values_list("slug", "pk")))
    if rule is None:
        return None
    metric_id, operator, threshold = rule
    samples = Signal.objects.filter(plan_id=action.plan_id, metric_id=metric_id, observed_at__lte=action.created_at)
    breaching = Q(**{BREACHING[operator]: threshold})
    last_ok = samples.exclude(breaching).order_by("-observed_at").values("observed_at")[:1]
    run = samples.filter(breaching, observed_at__gt=Coalesce(Subquery(last_ok), Value(EPOCH)))
    return run.order_by("observed_at").values_list("observed_at", flat=True).first()


FIRST_BREACHES_SQL = """
SELECT r.action_id, (
    SELECT min(s.observed_at) FROM rollouts_signal s
    WHERE s.plan_id = r.plan_id AND s.metric_id = r.metric_id AND s.observed_at <= r.created_at
      AND ({beyond} s.value)
      AND s.observed_at > COALESCE((
          SELECT max(o.observed_at) FROM rollouts_signal o
          WHERE o.plan_id = r.plan_id AND o.metric_id = r.metric_id AND o.observed_at <= r.created_at
            AND NOT ({beyond} o.value)), '-infinity'::timestamptz))
FROM (VALUES {rows}) AS r(action_id, plan_id, metric_id, created_at, operator, threshold)
"""
# `threshold < value` is `value > threshold`: the operator of each rollback's rule, read from the row.
BEYOND_SQL = ("CASE r.operator WHEN 'gt' THEN r.threshold < {v} WHEN 'gte' THEN r.threshold <= {v} "
              "WHEN 'lt' THEN r.threshold > {v} WHEN 'lte' THEN r.threshold >= {v} END")


def first_breaching_samples(actions: list[RolloutAction]) -> dict[int, datetime | None]:
    """first_breaching_sample of every rollback, in one statement on PostgreSQL."""
    metric_ids = dict(Metric.objects.values_list("slug", "pk"))
    rules = {a.pk: (a, rule) for a in actions if (rule := breach_rule(a, metric_ids)) is not None}
    if connection.vendor != "postgresql" or not rules:
        return {a.pk: first_breaching_sample(a, metric_ids) if a.pk in rules else None for a in actions}
    params: list = []
    for action, (metric_id, operator, threshold) in rules.values():
        params += [action.pk, action.plan_id, metric_id, action.created_at, operator, threshold]
    values = ", ".join(["(%s::bigint, %s::bigint, %s::bigint, %s::timestamptz, %s::text, %s::float8)"] * len(rules))
    sql = (FIRST_BREACHES_SQL.replace("{rows}", values)
           .replace("({beyond} s.value)", "(" + BEYOND_SQL.format(v="s.value") + ")")
           .replace("({beyond} o.value)", "(" + BEYOND_SQL.format(v="o.value") + ")"))
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        found = dict(cursor.fetchall())
    return {a.pk: found.get(a.pk) for a in actions}


def containment_rows(scope: Scope) -> list[tuple]:
    rollbacks = list(RolloutAction.objects.filter(
        plan__workflow_id__in=scope.workflow_ids, kind=RolloutAction.Kind.ROLLBACK,
        state=RolloutAction.State.SUCCEEDED, closed_at__gte=scope.start,
    ).select_related("plan__workflow", "trigger__metric").order_by("closed_at"))
    firsts = first_breaching_samples(rollbacks)
    rows = []
    for action in rollbacks:
        first = firsts[action.pk]
        if first is not None:
            rows.append((action.plan.workflow.slug, action.plan.release_version, action.pk, first, action.closed_at,
                         round((action.closed_at - first).total_seconds(), 1)))
    return rows


def time_to_containment(scope: Scope) -> charts.Chart:
    rows = containment_rows(scope)
    executed = [r[4] for r in rows]
    minutes = [r[5] / 60 for r in rows]
    trend = [statistics.median(minutes[max(0, i - 4): i + 1]) for i in range(len(minutes))]
    return charts.timeline(
        "time-to-containment", "Time to containment (minutes)",
        {"each rollback": (executed, minutes), "trend (median of the last 5)": (executed, trend)},
        modes={"each rollback": "markers", "trend (median of the last 5)": "lines"}, y_title="minutes",
        columns=("workflow", "release", "action", "first breaching sample (UTC)", "rollback executed (UTC)", "seconds"),
        rows=rows, note="From the first sample that breached the trigger to the executed rollback.")


OVERVIEW_CHARTS: dict[str, Callable[[Scope], charts.Chart]] = {
    "sla-pending": sla_pending,
    "sla-breaches": sla_breaches,
    "sla-escalations": sla_escalations,
    "sla-time-to-decision": sla_time_to_decision,
    "false-positives": false_positives_by_workflow,
    "false-positives-over-time": false_positives_over_time,
    "time-to-containment": time_to_containment,
}


# --- one plan ------------------------------------------------------------------------------------

def signal_points(plan: RolloutPlan, metric: Metric) -> list[tuple[datetime, float, float, float, int]]:
    """The samples, or their means per time bucket; before SIGNAL_RETENTION_DAYS, their per-minute rollups."""
    samples = Signal.objects.filter(plan=plan, metric=metric)
    bounds = samples.aggregate(n=Count("pk"), first=Min("observed_at"), last=Max("observed_at"))
    rolled = retention.rolled_up_span(plan.pk, metric.pk)
    if not bounds["n"] and rolled is None:
        return []
    if bounds["n"] <= RAW_POINTS and rolled is None:
        return [(at, v, v, v, 1) for at, v in samples.order_by("observed_at").values_list("observed_at", "value")]
    ends = [at for at in (bounds["first"], bounds["last"], *(rolled or ())) if at is not None]
    span = max(ends) - min(ends)
    bucket = TruncMinute if span <= timedelta(days=2) else TruncHour if span <= timedelta(days=60) else TruncDay
    rows = (samples.annotate(bucket=bucket("observed_at")).values("bucket")
            .annotate(mean=Avg("value"), low=Min("value"), high=Max("value"), n=Count("pk")).order_by("bucket"))
    points = [(r["bucket"], r["mean"], r["low"], r["high"], r["n"]) for r in rows]
    return retention.merge_points(points, retention.rolled_up_points(plan.pk, metric.pk, bucket)) if rolled else points


def ring_marks(plan: RolloutPlan) -> list[charts.Mark]:
    marks = []
    events = (AuditEvent.objects.filter(subject_type="rollouts.rolloutplan", subject_id=str(plan.pk),
                                        action__in=RING_EVENTS)
              .order_by("seq").values_list("action", "occurred_at", "data"))
    for action, at, data in events:
        if action in ("rollout.started", "rollout.ring_opened"):
            label = f"ring {data.get('ring')} opened"
        elif action == "rollout.narrowed":
            after = data.get("after") or {}
            label = f"narrowed to ring {after.get('ring')} at {after.get('exposure_percent')} %"
        else:
            label = "rolled back" if action == "rollout.rolled_back" else "fallback engaged"
        marks.append(charts.Mark(label, at))
    return marks


def tag_windows(plan: RolloutPlan, metric: Metric) -> list[charts.Mark]:
    tags = (ContextTag.objects.filter(Q(plan__isnull=True) | Q(plan=plan), workflow_id=plan.workflow_id)
            .filter(Q(metric__isnull=True) | Q(metric=metric)).order_by("starts_at"))
    return [charts.Mark(f"{tag.label} ({tag.reason[:40]})", tag.starts_at,
                        min(tag.ends_at, tag.withdrawn_at) if tag.withdrawn_at else tag.ends_at) for tag in tags]


def plan_rules(plan: RolloutPlan, metric: Metric) -> list[charts.Rule]:
    rules = [charts.Rule(f"criterion {evaluation.symbol(c.operator)} {c.threshold.normalize():f}", float(c.threshold),
                         "criterion") for c in plan.criteria.filter(metric=metric)]
    for t in plan.triggers.filter(metric=metric):
        rules.append(charts.Rule(f"{t.severity} trigger {evaluation.symbol(t.operator)} {t.threshold.normalize():f}",
                                 float(t.threshold), "trigger"))
        if t.off_hours_threshold is not None:
            rules.append(charts.Rule(f"off-hours {t.severity} trigger {t.off_hours_threshold.normalize():f}",
                                     float(t.off_hours_threshold), "trigger", dash="dot"))
    return rules


def plan_metrics(plan: RolloutPlan) -> list[Metric]:
    ids = (set(plan.criteria.values_list("metric_id", flat=True))
           | set(plan.triggers.values_list("metric_id", flat=True)))
    sampled = Exists(Signal.objects.filter(plan_id=plan.pk, metric_id=OuterRef("pk")))  # one index probe each
    return list(Metric.objects.filter(Q(pk__in=ids) | sampled).order_by("slug"))


def signal_chart(plan: RolloutPlan, metric: Metric, rings: list[charts.Mark] | None = None) -> charts.Chart:
    points = signal_points(plan, metric)
    chart = charts.signal_chart(
        f"signal-{metric.slug}", f"{metric.label or metric.slug} against its thresholds", metric.unit or metric.slug,
        points, plan_rules(plan, metric), ring_marks(plan) if rings is None else rings, tag_windows(plan, metric),
        note=" ".join(n for n in (
            "" if len(points) < RAW_POINTS else "Averaged per time bucket; the band shows each bucket's range.",
            review_signals.chart_note() if metric.slug in review_signals.METRICS else "") if n))
    chart.params = {"plan": plan.pk}
    return chart


def exposure_chart(plan: RolloutPlan, rings: list[charts.Mark] | None = None) -> charts.Chart:
    opened = {}
    for mark in ring_marks(plan) if rings is None else rings:
        if mark.label.endswith(" opened"):
            opened.setdefault(mark.label.split()[1], mark.start)
    rows = []
    for ring in plan.rings.all():
        reached = plan.current_ring is not None and ring.order <= plan.current_ring and plan.is_live
        exposure = ring.exposure_percent
        if reached and ring.order == plan.current_ring and plan.exposure_override is not None:
            exposure = min(exposure, plan.exposure_override)
        rows.append((ring.order, ring.segment, ring.exposure_percent, exposure if reached else 0,
                     opened.get(str(ring.order)), ring.min_soak, "yes" if ring.approval_point else ""))
    chart = charts.bars(
        "exposure", "Exposure by ring", [f"ring {r[0]} · {r[1]}" for r in rows],
        {"planned %": [r[2] for r in rows], "exposed now %": [r[3] for r in rows]},
        y_title="% of the segment's traffic",
        columns=("ring", "segment", "planned exposure %", "exposed now %", "opened (UTC)", "minimum soak",
                 "approval point"), rows=rows)
    chart.params = {"plan": plan.pk}
    return chart


def plan_charts(plan: RolloutPlan) -> list[charts.Chart]:
    rings = ring_marks(plan)  # read once for every chart of the plan
    return [exposure_chart(plan, rings), *(signal_chart(plan, metric, rings) for metric in plan_metrics(plan))]


# --- views ---------------------------------------------------------------------------------------

def _plan_in_scope(request: HttpRequest, pk: int | str | None) -> RolloutPlan:
    if not str(pk).isdigit():
        raise denials.out_of_scope(request, "rollout plan", pk)
    return denials.get_in_scope(request, _plans(request.user), "rollout plan", pk=pk)


@require_GET
@login_required
def dashboard(request: HttpRequest) -> HttpResponse:
    scope = scope_of(request)
    rows = plan_rows(scope)
    sections = [
        ("SLA health of the approval queue",
         [OVERVIEW_CHARTS[k](scope)
          for k in ("sla-pending", "sla-breaches", "sla-escalations", "sla-time-to-decision")]),
        ("False-positive rollbacks", [false_positives_by_workflow(scope), false_positives_over_time(scope)]),
        ("Time to containment", [time_to_containment(scope)]),
    ]
    for _, section in sections:
        for chart in section:
            chart.params = {"days": scope.days}
    return render(request, "rollouts/dashboard.html", {
        "scope": scope, "periods": PERIODS, "rows": rows, "overview": overview_chart(rows), "sections": sections})


@require_GET
@login_required
def plan_dashboard(request: HttpRequest, pk: int) -> HttpResponse:
    plan = _plan_in_scope(request, pk)
    row = plan_row(plan, clock.now())
    return render(request, "rollouts/dashboard_plan.html", {"plan": plan, "row": row, "charts": plan_charts(plan)})


@require_GET
@login_required
def chart_csv(request: HttpRequest, key: str) -> HttpResponse:
    if key in OVERVIEW_CHARTS:
        chart = OVERVIEW_CHARTS[key](scope_of(request))
    elif key == "rollouts":
        chart = overview_chart(plan_rows(scope_of(request)))
    else:
        plan = _plan_in_scope(request, request.GET.get("plan"))
        chart = next((c for c in plan_charts(plan) if c.key == key), None)
        if chart is None:
            raise Http404("No such chart.")
    response = HttpResponse(chart.csv(), content_type="text/csv; charset=utf-8")
    response["Content-Disposition"] = f'attachment; filename="ringfence-{key}.csv"'
    return response
