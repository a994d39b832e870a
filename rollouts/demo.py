"""The rollouts part of the demo story (zero-setup mode), built through the services so that
everything is audited like real data. Idempotent: each plan is looked up before it is created.

- billing-summary-staging, tier 1: the seeds' 2 AM database migration, twice. The first run had
  no context tag: its 15 % latency rise breached the trigger and was rolled back at once. The
  second run is tagged `expected_latency_increase: 15%` and rides out the same rise; it opens its
  next ring only while the owners' reviews judge at most 20 % of the workflow's autonomous actions
  wrong (`review_rejection_rate`, computed by Ringfence: inconclusive while too few are judged).
- support-reply-prompt: a prompt release at ring 1 of 3 with healthy, live-looking signals.
- refund-agent: a release running in its fallback mode (human review) after its error rate rose.
- account-disable-agent: a draft plan whose launch readiness is not complete yet.

`feed()` (a beat task in zero-setup mode) keeps the live demo plans' signals flowing.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal

from django.contrib.auth.models import User
from django.db import transaction

from core import clock
from governance import services as governance_services
from governance.models import ContainmentAssignment, Workflow
from rollouts import containment, evaluator, executors, plans, signals, tags
from rollouts.models import ContextTag, Metric, RolloutPlan

HISTORY = timedelta(minutes=45)
STEP = timedelta(seconds=30)
MIGRATION_REASON = ("The 23:00 database migration changes query patterns: p95 latency is expected to rise about 15 % "
                    "until the new indexes are warm. Known and accepted for this release.")


@dataclass
class DemoResult:
    created: list[str] = field(default_factory=list)


def _rings(*specs: tuple) -> list[dict]:
    return [{"segment_kind": kind, "segment_value": value, "exposure_percent": exposure,
             "min_soak": timedelta(hours=soak), "approval_point": approval}
            for kind, value, exposure, soak, approval in specs]


def _criteria() -> list[dict]:
    return [
        {"metric": Metric.objects.get(slug="quality_score"), "operator": "gte", "threshold": Decimal("0.8"),
         "window": timedelta(minutes=30), "min_samples": 6},
        {"metric": Metric.objects.get(slug="cost_per_task"), "operator": "lte", "threshold": Decimal("0.05"),
         "window": timedelta(minutes=30), "min_samples": 6},
    ]


def _reviewers_agree() -> dict:
    """Ringfence's own signal (rollouts.review_signals): the next ring opens only while the owners'
    post-facto reviews judge at most 20 % of the workflow's autonomous actions wrong."""
    return {"metric": Metric.objects.get(slug="review_rejection_rate"), "operator": "lte",
            "threshold": Decimal("0.2"), "window": timedelta(minutes=30), "min_samples": 5}


def _triggers(latency: int = 800) -> list[dict]:
    # Beat feeds the demo every 30 s while it runs: a demo stopped for an evening is not an outage
    # to pause for, so its signals count as lost only after half an hour, and the owners are told.
    quiet = {"no_data_after": timedelta(minutes=30), "on_no_data": "notify"}
    return [
        {"metric": Metric.objects.get(slug="latency_p95_ms"), "operator": "gt", "threshold": Decimal(latency),
         "sustained_for": timedelta(minutes=3), "min_samples": 5, "severity": "critical", **quiet},
        {"metric": Metric.objects.get(slug="error_rate"), "operator": "gt", "threshold": Decimal("0.05"),
         "sustained_for": timedelta(minutes=3), "min_samples": 5, "severity": "warning", **quiet},
    ]


# Each live demo plan's signal profile: metric → value at a time (`rise` = minutes since the change).
def _latency(base: float, rise_pct: float = 0.0) -> callable:
    def value(at: datetime, rng: random.Random) -> float:
        return round(base * (1 + rise_pct / 100) + 8 * math.sin(at.timestamp() / 300) + rng.uniform(-5, 5), 1)
    return value


def _around(center: float, spread: float, digits: int = 3) -> callable:
    return lambda at, rng: round(center + rng.uniform(-spread, spread), digits)


PROFILES = {
    ("billing-summary-staging", "billing-v5-migration"): {
        "latency_p95_ms": _latency(780, 15), "quality_score": _around(0.88, 0.03),
        "cost_per_task": _around(0.031, 0.003, 4), "error_rate": _around(0.012, 0.004, 4)},
    ("support-reply-prompt", "reply-prompt-v8"): {
        "latency_p95_ms": _latency(640), "quality_score": _around(0.91, 0.03),
        "cost_per_task": _around(0.018, 0.002, 4), "error_rate": _around(0.008, 0.003, 4)},
    ("refund-agent", "refund-v12"): {
        "latency_p95_ms": _latency(720), "quality_score": _around(0.83, 0.04),
        "cost_per_task": _around(0.042, 0.004, 4), "error_rate": _around(0.035, 0.01, 4)},
}


MIGRATION = ("billing-summary-staging", "billing-v5-migration")


def _samples(plan: RolloutPlan, since: datetime, until: datetime, *, key: tuple[str, str] | None = None,
             override: dict | None = None) -> list[tuple]:
    profile = {**PROFILES[key or (plan.workflow.slug, plan.release_version)], **(override or {})}
    ids = dict(Metric.objects.filter(slug__in=profile).values_list("slug", "pk"))
    rng = random.Random(f"{plan.pk}:{int(since.timestamp())}")
    ring = plan.rings.filter(order__lte=plan.current_ring or 0).order_by("order").last()
    rows, at = [], since
    while at <= until:
        for slug, value in profile.items():
            rows.append((ids[slug], ring.order, ring.segment, at, value(at, rng)))
        at += STEP
    return rows


def _plan(workflow: Workflow, release: str) -> RolloutPlan | None:
    return RolloutPlan.objects.filter(workflow=workflow, release_version=release).first()


def _ensure_owners(workflow: Workflow, admin: User, primary: User, backup: User) -> None:
    for duty in ContainmentAssignment.Duty.values:
        for user, position in ((primary, "primary"), (backup, "backup")):
            if not workflow.containment.filter(duty=duty, user=user).exists():
                governance_services.assign_containment(workflow.pk, actor=admin, user=user, duty=duty,
                                                       position=position)


def _create(result: DemoResult, workflow: Workflow, rhea: User, *, name: str, release: str, stable: str,
            rings: list[dict], fallback: str = "human_review", triggers: list[dict] | None = None,
            notes: str = "", criteria: list[dict] | None = None) -> tuple[RolloutPlan, bool]:
    plan = _plan(workflow, release)
    if plan is not None:
        return plan, False
    plan = plans.create_plan(
        actor=rhea, workflow=workflow,
        fields={"name": name, "release_version": release, "stable_version": stable, "fallback_mode": fallback,
                "executor": "flag", "notes": notes},
        rings=rings, criteria=_criteria() if criteria is None else criteria,
        triggers=_triggers() if triggers is None else triggers)
    result.created.append(f"rollout plan {workflow.slug} {release}")
    return plan, True


def _migration_night(result: DemoResult, workflow: Workflow, rhea: User) -> None:
    rings = _rings(("internal_team", "finance-ops", 100, 2, False), ("account_type", "pilot-customers", 100, 12, True))
    now = clock.now()
    first, created = _create(result, workflow, rhea,
                             name="Billing summary v5: database migration (first run, untagged)",
                             release="billing-v5-migration-r1", stable="billing-v4", rings=rings,
                             notes="The migration ran without a context tag.")
    if created:
        first = plans.start_rollout(first.pk, actor=rhea)
        rise = {"latency_p95_ms": lambda at, rng: round((780 if at < now - timedelta(minutes=6) else 897)
                                                        + rng.uniform(-6, 6), 1)}
        signals.ingest_signals(first, _samples(first, now - timedelta(minutes=20), now, key=MIGRATION, override=rise))
        evaluator.evaluate_plan(first.pk)  # tier 1, untagged: the rollback executes at once
        for action in first.actions.filter(state="scheduled"):
            executors.run(action.pk, worker="demo")
    second, created = _create(result, workflow, rhea, name="Billing summary v5: database migration (tagged)",
                              release="billing-v5-migration", stable="billing-v4", rings=rings,
                              criteria=[*_criteria(), _reviewers_agree()],
                              notes="The same migration again, with the expected latency rise tagged.")
    if created:
        second = plans.start_rollout(second.pk, actor=rhea)
        tags.create_context_tag(actor=rhea, workflow=workflow, plan=second,
                                kind=ContextTag.Kind.EXPECTED_LATENCY_INCREASE,
                                expected_change_percent=Decimal("15"), ends_at=now + timedelta(hours=12),
                                reason=MIGRATION_REASON)
        signals.ingest_signals(second, _samples(second, now - HISTORY, now))
        evaluator.evaluate_plan(second.pk)  # within the widened threshold: holds, and says which tag did it


def _ring_rollout(result: DemoResult, workflow: Workflow, rhea: User, olivia: User) -> None:
    rings = _rings(("internal_team", "support-ops", 100, 1, False),
                   ("customer_group", "friendly-partners", 100, 6, True),
                   ("traffic_slice", "all", 25, 24, True))
    plan, created = _create(result, workflow, rhea, name="Support reply prompt v8", release="reply-prompt-v8",
                            stable="reply-prompt-v7", rings=rings, fallback="simpler_route")
    if created:
        plans.start_rollout(plan.pk, actor=rhea)
        containment.expand_rollout(plan.pk, actor=olivia, reason="Support ops signed off after a day on v8.")
        plan.refresh_from_db()
        signals.ingest_signals(plan, _samples(plan, clock.now() - HISTORY, clock.now()))


def _fallback(result: DemoResult, workflow: Workflow, rhea: User, olivia: User) -> None:
    rings = _rings(("internal_team", "payments-ops", 100, 2, False), ("customer_group", "uk-retail", 100, 12, True))
    plan, created = _create(result, workflow, rhea, name="Refund agent v12", release="refund-v12", stable="refund-v11",
                            rings=rings)
    if created:
        plan = plans.start_rollout(plan.pk, actor=rhea)
        now = clock.now()
        errors = {"error_rate": lambda at, rng: round((0.02 if at < now - timedelta(minutes=8) else 0.071)
                                                      + rng.uniform(-0.004, 0.004), 4)}
        signals.ingest_signals(plan, _samples(plan, now - HISTORY, now, override=errors))
        action = containment.engage_fallback(plan.pk, actor=olivia, mode="human_review",
                                             reason="Error rate 7 % on payments-ops since 10 minutes: refunds go to "
                                                    "human review while we look.")
        executors.run(action.pk, worker="demo")


def _draft(result: DemoResult, workflow: Workflow, rhea: User) -> None:
    _create(result, workflow, rhea, name="Account-disable classifier v3", release="disable-classifier-v3",
            stable="disable-classifier-v2", rings=_rings(("internal_team", "trust-safety", 100, 24, False)),
            fallback="", triggers=[], notes="Draft: triggers and fallback still to be agreed with Trust & Safety.")


def seed() -> DemoResult:
    result = DemoResult()
    users = {u.username: u for u in User.objects.filter(username__in=["ada", "rhea", "olivia", "oscar"])}
    workflows = {w.slug: w for w in Workflow.objects.all()}
    if len(users) < 4 or not {"billing-summary-staging", "support-reply-prompt", "refund-agent",
                              "account-disable-agent"} <= set(workflows):
        return result  # governance.demo seeds people and workflows first
    rhea, olivia = users["rhea"], users["olivia"]
    # One transaction per story: a story is either all there or not at all, so seeding again completes it.
    with transaction.atomic():
        _ensure_owners(workflows["billing-summary-staging"], users["ada"], olivia, users["oscar"])
        _migration_night(result, workflows["billing-summary-staging"], rhea)
    with transaction.atomic():
        _ring_rollout(result, workflows["support-reply-prompt"], rhea, olivia)
    with transaction.atomic():
        _fallback(result, workflows["refund-agent"], rhea, olivia)
    with transaction.atomic():
        _draft(result, workflows["account-disable-agent"], rhea)
    return result


def feed() -> int:
    """Fresh samples for the live demo plans, from each one's last sample up to now."""
    stored = 0
    now = clock.now()
    for (slug, release) in PROFILES:
        plan = RolloutPlan.objects.filter(workflow__slug=slug, release_version=release,
                                          state__in=RolloutPlan.LIVE_STATES).select_related("workflow").first()
        if plan is None:
            continue
        last = plan.signals.order_by("-observed_at").values_list("observed_at", flat=True).first()
        since = max(last + STEP, now - HISTORY) if last else now - HISTORY
        if since <= now:
            stored += signals.ingest_signals(plan, _samples(plan, since, now)).stored
    return stored
