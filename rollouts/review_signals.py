"""Ringfence's own human-review signals: computed from the approval queue and the post-facto
reviews of a live plan's workflow, and ingested as samples like pushed ones (rollouts.signals),
so criteria, triggers, evidence and the plan page's charts treat them alike.

Over a window (start, end] ending now:

- `review_rejection_rate`: of the post-facto reviews judged in the window (agent actions and
  rollout actions that ran with no person before them), the share judged a false positive.
- `override_rate`: of the requests people decided in the window (approved, rejected or
  overridden; closed by silence or expiry they were not decided), the share closed by an override.
- `approval_latency_p90`: seconds from request to the decision that closed it, for the same
  requests; the 90th percentile, interpolated (PostgreSQL's `percentile_cont`).
- `false_positive_rate`: of the reviews of automatic rollbacks and fallbacks judged in the window,
  the share judged a false positive (unnecessary).
- `review_load`: requests pending now (not held by a kill switch) per eligible approver (active
  people holding the approve permission on the workflow, directly or through a group). A gauge of
  this moment: it has no window and no minimum.

A window with fewer than ROLLOUT_REVIEW_MIN_DECISIONS decisions (reviews, or decided requests) says
nothing: no sample, so a criterion is inconclusive and a trigger's signal thins out (and, if it
stays quiet past `no_data_after`, counts as lost), never 0 %. Likewise `review_load` with no
eligible approver.

Each rule computes over its own window (a criterion's window, a trigger's sustained-for). A plan's
samples of one metric are a single series, so when several rules of a plan read the same review
metric over different windows, the shortest is used. The queue and the reviews carry no segment or
ring: each value is the whole workflow's, labelled with the ring the plan is at and its segment.
Only metrics a live plan's criteria or triggers read are computed, by the beat task
`rollouts.tasks.sample_review_signals`, one sample per metric and plan each
ROLLOUT_REVIEW_SIGNALS_SECONDS. Writes only through `ingest_signals`; the samples are not audited
one by one (the decisions they lead to are).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

from django.conf import settings
from django.db.models import Count, Q, QuerySet
from guardian.shortcuts import get_users_with_perms

from approvals.models import ApprovalRequest
from core import clock
from core.errors import TransitionRefused
from governance.models import Workflow
from governance.permissions import APPROVE
from rollouts.models import ActionReview, RolloutAction, RolloutPlan
from rollouts.signals import IngestResult, ingest_signals

log = logging.getLogger(__name__)

REVIEW_REJECTION_RATE = "review_rejection_rate"
OVERRIDE_RATE = "override_rate"
APPROVAL_LATENCY_P90 = "approval_latency_p90"
REVIEW_LOAD = "review_load"
FALSE_POSITIVE_RATE = "false_positive_rate"
METRICS = (REVIEW_REJECTION_RATE, OVERRIDE_RATE, APPROVAL_LATENCY_P90, REVIEW_LOAD, FALSE_POSITIVE_RATE)

DECIDED_BY_A_PERSON = (ApprovalRequest.State.APPROVED, ApprovalRequest.State.REJECTED,
                       ApprovalRequest.State.OVERRIDDEN)
AUTOMATIC_CONTAINMENT = (RolloutAction.Kind.ROLLBACK, RolloutAction.Kind.FALLBACK)


@dataclass(frozen=True)
class Reading:
    """One computed value, or None with the reason there is none."""

    metric: str
    value: float | None
    decisions: int  # what it was computed from: reviews, decided requests, or pending requests
    window: timedelta | None = None
    note: str = ""


def percentile(values: list[float], q: float) -> float:
    """The q-quantile with linear interpolation between the closest ranks (`percentile_cont`)."""
    ordered = sorted(values)
    position = q * (len(ordered) - 1)
    low, high = math.floor(position), math.ceil(position)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def _too_few(metric: str, count: int, what: str, window: timedelta, minimum: int) -> Reading:
    return Reading(metric, None, count, window, f"{count} {what} in the window, {minimum} needed")


def _share_judged_wrong(metric: str, reviews: QuerySet[ActionReview], window: timedelta, minimum: int) -> Reading:
    counts = reviews.aggregate(total=Count("pk"),
                               wrong=Count("pk", filter=Q(verdict=ActionReview.Verdict.FALSE_POSITIVE)))
    total, wrong = counts["total"], counts["wrong"]
    if total < minimum:
        return _too_few(metric, total, "reviews", window, minimum)
    return Reading(metric, wrong / total, total, window, f"{wrong} of {total} judged wrong")


def _reviews(workflow_id: int, start: datetime, end: datetime) -> QuerySet[ActionReview]:
    return (ActionReview.objects.filter(workflow_id=workflow_id, reviewed_at__gt=start, reviewed_at__lte=end)
            .exclude(verdict=ActionReview.Verdict.PENDING))


def _decided(workflow_id: int, start: datetime, end: datetime) -> QuerySet[ApprovalRequest]:
    return ApprovalRequest.objects.filter(workflow_id=workflow_id, state__in=DECIDED_BY_A_PERSON,
                                          closed_at__gt=start, closed_at__lte=end)


def review_rejection_rate(workflow: Workflow, at: datetime, window: timedelta, minimum: int) -> Reading:
    return _share_judged_wrong(REVIEW_REJECTION_RATE, _reviews(workflow.pk, at - window, at), window, minimum)


def false_positive_rate(workflow: Workflow, at: datetime, window: timedelta, minimum: int) -> Reading:
    reviews = _reviews(workflow.pk, at - window, at).filter(action__kind__in=AUTOMATIC_CONTAINMENT)
    return _share_judged_wrong(FALSE_POSITIVE_RATE, reviews, window, minimum)


def override_rate(workflow: Workflow, at: datetime, window: timedelta, minimum: int) -> Reading:
    counts = _decided(workflow.pk, at - window, at).aggregate(
        total=Count("pk"), overridden=Count("pk", filter=Q(state=ApprovalRequest.State.OVERRIDDEN)))
    total, overridden = counts["total"], counts["overridden"]
    if total < minimum:
        return _too_few(OVERRIDE_RATE, total, "decided requests", window, minimum)
    return Reading(OVERRIDE_RATE, overridden / total, total, window,
                   f"{overridden} of {total} decided requests overridden")


def approval_latency_p90(workflow: Workflow, at: datetime, window: timedelta, minimum: int) -> Reading:
    latencies = [(closed - created).total_seconds() for created, closed in
                 _decided(workflow.pk, at - window, at).values_list("created_at", "closed_at")]
    if len(latencies) < minimum:
        return _too_few(APPROVAL_LATENCY_P90, len(latencies), "decided requests", window, minimum)
    return Reading(APPROVAL_LATENCY_P90, percentile(latencies, 0.9), len(latencies), window,
                   f"p90 of {len(latencies)} decided requests")


def eligible_approvers(workflow: Workflow) -> int:
    """Active people who may approve the workflow's requests (object permission, direct or by group)."""
    users = get_users_with_perms(workflow, with_group_users=True, with_superusers=False, only_with_perms_in=[APPROVE])
    return users.filter(is_active=True).count()


def review_load(workflow: Workflow, at: datetime, window: timedelta | None = None, minimum: int = 0) -> Reading:
    pending = ApprovalRequest.objects.filter(workflow_id=workflow.pk, state=ApprovalRequest.State.PENDING,
                                             held_at__isnull=True, created_at__lte=at).count()
    approvers = eligible_approvers(workflow)
    if not approvers:
        return Reading(REVIEW_LOAD, None, pending, None, f"{pending} pending and nobody may approve them")
    return Reading(REVIEW_LOAD, pending / approvers, pending, None, f"{pending} pending, {approvers} approvers")


COMPUTE: dict[str, Callable[[Workflow, datetime, timedelta, int], Reading]] = {
    REVIEW_REJECTION_RATE: review_rejection_rate,
    OVERRIDE_RATE: override_rate,
    APPROVAL_LATENCY_P90: approval_latency_p90,
    REVIEW_LOAD: review_load,
    FALSE_POSITIVE_RATE: false_positive_rate,
}


def read(workflow: Workflow, metric: str, *, window: timedelta, at: datetime | None = None,
         minimum: int | None = None) -> Reading:
    """One review metric of a workflow over (at - window, at]."""
    minimum = settings.ROLLOUT_REVIEW_MIN_DECISIONS if minimum is None else minimum
    return COMPUTE[metric](workflow, at or clock.now(), window, minimum)


def chart_note() -> str:
    """What the plan page says under a review signal's chart."""
    return (f"Computed by Ringfence from the workflow's approval queue and reviews; a window with fewer than "
            f"{settings.ROLLOUT_REVIEW_MIN_DECISIONS} decisions has no point (no data, not 0).")


def windows_of(plan: RolloutPlan) -> dict[str, tuple[int, timedelta]]:
    """Metric slug → (metric id, window) for the review metrics the plan's rules read: each rule's
    own window (criterion window, trigger sustained-for), the shortest when several read one."""
    windows: dict[str, tuple[int, timedelta]] = {}
    rules = [*((c.metric_id, c.metric.slug, c.window) for c in plan.criteria.select_related("metric")),
             *((t.metric_id, t.metric.slug, t.sustained_for) for t in plan.triggers.select_related("metric"))]
    for metric_id, slug, window in rules:
        if slug in COMPUTE and (slug not in windows or window < windows[slug][1]):
            windows[slug] = (metric_id, window)
    return windows


@dataclass(frozen=True)
class PlanSample:
    plan_id: int
    readings: tuple[Reading, ...]
    ingested: IngestResult | None


def sample_plan(plan: RolloutPlan, at: datetime | None = None) -> PlanSample:
    """Compute the review metrics a live plan's rules read and ingest those with a value, at `at`
    (now), labelled with the plan's current ring and its segment. Readings without a value are
    returned (and logged), not stored."""
    at = at or clock.now()
    windows = windows_of(plan)
    ring = plan.rings.filter(order=plan.current_ring).first() if plan.current_ring is not None else None
    readings, rows = [], []
    for slug, (metric_id, window) in sorted(windows.items()):
        reading = read(plan.workflow, slug, window=window, at=at)
        readings.append(reading)
        if reading.value is None:
            log.debug("plan %s: no %s sample: %s", plan.pk, slug, reading.note)
            continue
        rows.append((metric_id, plan.current_ring, ring.segment if ring else "", at, float(reading.value)))
    ingested = ingest_signals(plan, rows) if rows else None
    return PlanSample(plan.pk, tuple(readings), ingested)


def plans_reading_review_metrics() -> QuerySet[RolloutPlan]:
    return (RolloutPlan.objects.filter(state__in=RolloutPlan.LIVE_STATES)
            .filter(Q(criteria__metric__slug__in=METRICS) | Q(triggers__metric__slug__in=METRICS))
            .select_related("workflow").distinct().order_by("pk"))


def sample_live_plans(at: datetime | None = None) -> list[PlanSample]:
    """The beat's round: every live plan whose rules read a review metric gets its samples."""
    done = []
    for plan in plans_reading_review_metrics():
        try:
            done.append(sample_plan(plan, at))
        except TransitionRefused as refusal:  # the plan stopped being live meanwhile
            log.info("review signals of plan %s not ingested: %s", plan.pk, refusal.message)
        except Exception:  # one broken plan must not stop the others' samples
            log.exception("review signals of plan %s failed", plan.pk)
    return done
