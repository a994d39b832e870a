#!/usr/bin/env python3
"""Dashboards benchmark: the managers' overview (/rollouts/dashboards/) and one plan's page with 30
days of a busy installation, against a reference page measured in the same run.

The installation: 30 workflows in the manager's scope, each with a live rollout (3 rings, 2
criteria, 2 triggers) and 3 finished ones (completed or rolled back, with the breach that led to the
rollback); a sample of 4 metrics every 2 minutes of every live rollout for 30 days and of every
finished one for its last 2 days (3.1 million signals; BENCH_SIGNAL_SECONDS=60 doubles them), 300
approval requests a day with their decisions, escalations and overrides, rollbacks with post-facto
reviews, and 50,000 audit events.

Prints each page's time (median and worst of BENCH_RUNS loads through the whole middleware stack,
Django's test client) and SQL query count, and the reference page's (/rollouts/, the plan list) for
scale. The evaluator leaves each live plan's health in the cache when it evaluates it, and a reader
who finds none evaluates the plan and shares the answer for 15 s (rollouts/health.py); the "health
cold" line is a reader who finds none, paying for evaluating every live rollout, the "after
evaluation" line the first reader after the evaluator went over every live plan (as beat does every
ROLLOUT_EVALUATION_SECONDS), with every other shared cache emptied. Target: the overview under 500 ms.

    .venv/bin/python bench/dashboards.py            # BENCH_SIGNAL_SECONDS=600 for a quicker look

Works in its own scratch database (ringfence_bench_dashboards), created, migrated and dropped here.
Rows are bulk-inserted or COPYed (the setup is not what is measured).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import os
import random
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from export import log, scratch_database  # noqa: E402  (bench/ is the script's directory)

RUNS = int(os.environ.get("BENCH_RUNS", "10"))
SIGNAL_SECONDS = int(os.environ.get("BENCH_SIGNAL_SECONDS", "120"))
WORKFLOWS = int(os.environ.get("BENCH_WORKFLOWS", "30"))
DAYS = 30
REQUESTS_PER_DAY = 300
FILLER_EVENTS = 50_000
TARGET_MS = 500
METRICS = {"quality_score": (0.9, 0.02), "cost_per_task": (0.03, 0.004), "latency_p95_ms": (620.0, 60.0),
           "error_rate": (0.01, 0.004)}
DUTIES = ("pause", "narrow", "fallback", "rollback", "escalate", "approve_expansion")


def plan_spec(name: str, release: str):
    from decimal import Decimal

    from rollouts.models import Metric

    metric = {m.slug: m for m in Metric.objects.filter(slug__in=METRICS)}
    minutes = dt.timedelta(minutes=1)
    return {
        "fields": {"name": name, "release_version": release, "stable_version": "stable-v1",
                   "fallback_mode": "human_review", "executor": "flag"},
        "rings": [
            {"segment_kind": "internal_team", "segment_value": "ops", "exposure_percent": 100,
             "min_soak": 60 * minutes},
            {"segment_kind": "customer_group", "segment_value": "partners", "exposure_percent": 100,
             "min_soak": 240 * minutes, "approval_point": True},
            {"segment_kind": "traffic_slice", "segment_value": "all", "exposure_percent": 25,
             "min_soak": 600 * minutes},
        ],
        "criteria": [
            {"metric": metric["quality_score"], "operator": "gte", "threshold": Decimal("0.8"),
             "window": 30 * minutes, "min_samples": 10},
            {"metric": metric["cost_per_task"], "operator": "lte", "threshold": Decimal("0.05"),
             "window": 30 * minutes, "min_samples": 10},
        ],
        "triggers": [
            {"metric": metric["latency_p95_ms"], "operator": "gt", "threshold": Decimal("800"),
             "sustained_for": 5 * minutes, "min_samples": 3, "severity": "critical"},
            {"metric": metric["error_rate"], "operator": "gt", "threshold": Decimal("0.05"),
             "sustained_for": 5 * minutes, "min_samples": 3, "severity": "warning"},
        ],
    }


def setup_people():
    from django.contrib.auth.models import Group, User

    admin = User.objects.create_superuser("bench-admin", "admin@example.com", "x")
    manager = User.objects.create_user("bench-maya", "maya@example.com", "x")
    manager.groups.add(Group.objects.get(name="manager"))
    owner = User.objects.create_user("bench-olivia", "olivia@example.com", "x")
    owner.groups.add(Group.objects.get(name="containment_owner"))
    approvers = [User.objects.create_user(f"bench-approver-{i}", f"a{i}@example.com", "x") for i in range(5)]
    return admin, manager, owner, approvers


def setup_plans(admin, manager, owner, now):
    """Each workflow: a live plan started 30 days ago at ring 1, and three finished ones."""
    from guardian.shortcuts import assign_perm

    from governance.models import ContainmentAssignment, Workflow
    from rollouts import plans
    from rollouts.models import RolloutPlan

    Workflow.objects.bulk_create([Workflow(slug=f"wf-{i:02d}", name=f"Workflow {i}") for i in range(WORKFLOWS)])
    workflows = list(Workflow.objects.order_by("slug"))
    assign_perm("governance.view_workflow", manager, Workflow.objects.filter(pk__in=[w.pk for w in workflows]))
    ContainmentAssignment.objects.bulk_create([
        ContainmentAssignment(workflow=wf, user=owner, duty=duty, position="primary")
        for wf in workflows for duty in DUTIES])
    live, finished = [], []
    for i, wf in enumerate(workflows):
        plan = plans.create_plan(actor=admin, workflow=wf, **plan_spec(f"Release {i}", f"v{i}-live"))
        live.append(plans.start_rollout(plan.pk, actor=admin))
        for j, state in enumerate(("completed", "completed", "rolled_back")):
            done = plans.create_plan(actor=admin, workflow=wf, **plan_spec(f"Release {i}.{j}", f"v{i}-{j}"))
            finished.append((done, state))
    started = now - dt.timedelta(days=DAYS)
    RolloutPlan.objects.filter(pk__in=[p.pk for p in live]).update(
        started_at=started, current_ring=1, ring_opened_at=now - dt.timedelta(hours=3))
    for k, (plan, state) in enumerate(finished):
        closed = now - dt.timedelta(days=1 + k * (DAYS - 2) / len(finished))
        RolloutPlan.objects.filter(pk=plan.pk).update(state=state, current_ring=2 if state == "completed" else 1,
                                                      started_at=closed - dt.timedelta(days=2), closed_at=closed)
    live = list(RolloutPlan.objects.filter(pk__in=[p.pk for p in live]))
    finished = [(RolloutPlan.objects.get(pk=p.pk), state) for p, state in finished]
    return workflows, live, finished


def copy_signals(live, finished, now) -> int:
    """One sample per metric every SIGNAL_SECONDS: 30 days for live plans, 2 days for finished ones
    (a rolled-back plan's latency breaches for its last 20 minutes)."""
    from django.db import connection

    from rollouts.models import Metric

    metric_ids = dict(Metric.objects.filter(slug__in=METRICS).values_list("slug", "pk"))
    rng = random.Random(7)
    spans = [(p, now - dt.timedelta(days=DAYS), now, False) for p in live]
    spans += [(p, p.closed_at - dt.timedelta(days=2), p.closed_at, state == "rolled_back") for p, state in finished]
    total = 0
    with connection.cursor() as cursor, cursor.connection.cursor().copy(
            "COPY rollouts_signal (plan_id, metric_id, ring, segment, observed_at, value, received_at, late) "
            "FROM STDIN") as copy:
        for plan, start, end, breaches in spans:
            steps = int((end - start).total_seconds() // SIGNAL_SECONDS)
            for slug, (mean, spread) in METRICS.items():
                metric_id = metric_ids[slug]
                for step in range(steps):
                    at = start + dt.timedelta(seconds=step * SIGNAL_SECONDS)
                    value = rng.gauss(mean, spread)
                    if breaches and slug == "latency_p95_ms" and end - at < dt.timedelta(minutes=20):
                        value = 900 + rng.random() * 100
                    copy.write_row((plan.pk, metric_id, 1, "", at, max(value, 0.0), at, False))
                total += steps
    with connection.cursor() as cursor:
        cursor.execute("ANALYZE rollouts_signal")
    return total


def add_requests(workflows, approvers, now) -> list:
    from approvals.models import ApprovalRequest, Decision, EscalationPolicy

    policy = EscalationPolicy.objects.get(workflow__isnull=True, mode="gate", hours="any")
    window = EscalationPolicy.objects.get(workflow__isnull=True, mode="override_window", hours="any")
    rng = random.Random(11)
    rows, outcomes = [], []
    for i in range(DAYS * REQUESTS_PER_DAY):
        created = now - dt.timedelta(seconds=rng.random() * DAYS * 86400)
        roll = rng.random()
        kind, mode, state = "agent_action", "gate", "approved"
        if roll < 0.08:
            kind, mode, state = "rollback", "override_window", rng.choice(["overridden", "auto_approved", "approved"])
        elif roll < 0.18:
            state = "rejected"
        elif roll < 0.21:
            state = "expired"
        if created > now - dt.timedelta(minutes=30):
            state = "pending"
        minutes = rng.expovariate(1 / 4)
        closed = None if state == "pending" else min(created + dt.timedelta(minutes=minutes), now)
        escalated = created + dt.timedelta(minutes=10) if (minutes > 10 or state == "expired") and closed else None
        rows.append(ApprovalRequest(
            workflow=workflows[i % len(workflows)], kind=kind, action="refund_customer", parameters={"n": i},
            evidence={"metrics": [{"metric": "refund_amount", "value": 100, "operator": ">", "threshold": 50}]},
            requester_label="bench-agent", mode=mode, policy=window if mode == "override_window" else policy,
            level=1 if escalated else 0, quorum=1, state=state, created_at=created,
            due_at=created + dt.timedelta(minutes=10), escalated_at=escalated, closed_at=closed,
            closed_by_label="bench" if closed else ""))
        outcomes.append((state, closed, rng.choice(["noise", "known_change", "expected_behaviour"])))
    requests = ApprovalRequest.objects.bulk_create(rows, batch_size=2000)
    verdicts = {"approved": "approve", "rejected": "reject", "overridden": "override"}
    decisions = [Decision(request=req, decided_by=approvers[k % len(approvers)], verdict=verdicts[state],
                          justification="" if state == "approved" else "bench", decided_at=closed,
                          reason=reason if state == "overridden" else "", level=req.level)
                 for k, (req, (state, closed, reason)) in enumerate(zip(requests, outcomes, strict=True))
                 if state in verdicts]
    Decision.objects.bulk_create(decisions, batch_size=2000)
    return requests


def add_rollbacks(finished, owner) -> None:
    from rollouts.models import ActionReview, RolloutAction

    actions, reviews = [], []
    for plan, state in finished:
        if state != "rolled_back":
            continue
        trigger = plan.triggers.get(severity="critical")
        actions.append(RolloutAction(
            plan=plan, kind="rollback", state="succeeded", origin="trigger", trigger=trigger, tier=1,
            handling="execute", executor="flag", idempotency_key=f"bench-rollback-{plan.pk}",
            evidence={"trigger": {"metric": "latency_p95_ms", "operator": "gt", "threshold": 800.0}},
            reason="latency_p95_ms > 800 fired", created_at=plan.closed_at - dt.timedelta(seconds=30),
            closed_at=plan.closed_at))
    RolloutAction.objects.bulk_create(actions)
    for k, action in enumerate(RolloutAction.objects.filter(idempotency_key__startswith="bench-rollback-")):
        verdict = ("correct", "false_positive", "")[k % 3]
        reviews.append(ActionReview(action=action, workflow_id=action.plan.workflow_id, created_at=action.closed_at,
                                    verdict=verdict, reason="noise" if verdict == "false_positive" else "",
                                    reviewed_at=action.closed_at + dt.timedelta(hours=1) if verdict else None,
                                    reviewed_by=owner if verdict else None))
    ActionReview.objects.bulk_create(reviews)


def add_audit_events(requests, live, finished, now) -> int:
    """The escalations and ring events the dashboards read, and filler, appended after what the
    services wrote (sequenced first). Hashes are unique stand-ins: nothing here verifies the chain."""
    from audit import sequencing
    from audit.models import AuditEvent

    while sequencing.sequence_pending():
        pass
    seq = AuditEvent.objects.order_by("-seq").values_list("seq", flat=True).first() or 0
    rng = random.Random(13)
    rows = []

    def event(at, action, subject_type, subject_id, workflow, data):
        nonlocal seq
        seq += 1
        digest = hashlib.sha256(f"bench-{seq}".encode()).hexdigest()
        rows.append(AuditEvent(seq=seq, occurred_at=at, actor_kind="system", actor_label="bench", action=action,
                               subject_type=subject_type, subject_id=str(subject_id), workflow_slug=workflow,
                               data=data, canonical="{}", prev_hash=f"p{digest[1:]}", hash=digest))

    for req in requests:
        if req.escalated_at:
            event(req.escalated_at, "approval.escalated", "approvals.approvalrequest", req.pk, req.workflow.slug,
                  {"level": 1, "due_at": req.escalated_at.isoformat()})
    for plan in live:
        event(plan.started_at, "rollout.started", "rollouts.rolloutplan", plan.pk, plan.workflow.slug, {"ring": 0})
        event(plan.ring_opened_at, "rollout.ring_opened", "rollouts.rolloutplan", plan.pk, plan.workflow.slug,
              {"ring": 1})
    for plan, state in finished:
        event(plan.started_at, "rollout.started", "rollouts.rolloutplan", plan.pk, plan.workflow.slug, {"ring": 0})
        event(plan.closed_at, "rollout.rolled_back" if state == "rolled_back" else "rollout.completed",
              "rollouts.rolloutplan", plan.pk, plan.workflow.slug, {})
    for _ in range(FILLER_EVENTS):
        req = rng.choice(requests)
        event(req.created_at, "approval.requested", "approvals.approvalrequest", req.pk, req.workflow.slug, {})
    rows.sort(key=lambda e: e.seq)
    AuditEvent.objects.bulk_create(rows, batch_size=5000)
    return len(rows)


def cold() -> None:
    """Every shared cache emptied: the live plans' health is evaluated again by the reader."""
    from django.core.cache import cache

    cache.clear()


def evaluated(live) -> Callable[[], None]:
    """Every shared cache emptied, then every live plan evaluated as beat's evaluate_live_plans does."""
    from rollouts import evaluator

    def prepare() -> None:
        cold()
        for plan in live:
            evaluator.evaluate_plan(plan.pk)

    return prepare


def measure(client, path: str, *, prepare: Callable[[], None] | None = None) -> tuple[list[float], int]:
    """Page times and the query count; `prepare` runs before each load, untimed."""
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    client.get(path)  # warm
    times = []
    for _ in range(RUNS):
        if prepare:
            prepare()
        started = time.perf_counter()
        response = client.get(path)
        times.append((time.perf_counter() - started) * 1000)
        assert response.status_code == 200, (path, response.status_code)
    if prepare:
        prepare()
    with CaptureQueriesContext(connection) as queries:
        client.get(path)
    return times, len(queries)


def main() -> int:
    with scratch_database("ringfence_bench_dashboards"):
        from django.db import connection
        from django.test import Client

        from core import clock

        now = clock.now()
        started = time.perf_counter()
        admin, manager, owner, approvers = setup_people()
        workflows, live, finished = setup_plans(admin, manager, owner, now)
        log(f"  plans set up in {time.perf_counter() - started:.0f} s")
        signals = copy_signals(live, finished, now)
        log(f"  signals copied in {time.perf_counter() - started:.0f} s")
        requests = add_requests(workflows, approvers, now)
        add_rollbacks(finished, owner)
        events = add_audit_events(requests, live, finished, now)
        with connection.cursor() as cursor:
            cursor.execute("ANALYZE")
        log(f"dashboards: {len(workflows)} workflows in the manager's scope, {len(live)} live and {len(finished)} "
            f"finished rollouts, {signals:,} signals, {len(requests):,} approval requests, {events:,} audit events "
            f"(set up in {time.perf_counter() - started:.0f} s); {RUNS} loads per page; load average "
            f"{os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
        from django.conf import settings

        from core import zero_setup

        zero_setup.prepare(settings.VAR_DIR)  # the filesystem broker's folders: the evaluator publishes
        client = Client()
        client.force_login(manager)
        pages = [("reference: the plan list", "/rollouts/", None),
                 ("overview, last 30 days", "/rollouts/dashboards/", None),
                 ("  the same, health cold", "/rollouts/dashboards/", cold),
                 ("overview, last 90 days", "/rollouts/dashboards/?days=90", None),
                 ("one live plan", f"/rollouts/dashboards/plans/{live[0].pk}/", None),
                 # Last: the evaluator acts on what it finds (signals the setup stopped writing may count as lost).
                 ("overview after evaluation", "/rollouts/dashboards/", evaluated(live))]
        log(f"{'page':<26} {'p50 ms':>8} {'max ms':>8} {'queries':>8} {'x reference':>12}")
        reference = None
        results = {}
        for label, path, prepare in pages:
            times, queries = measure(client, path, prepare=prepare)
            p50 = statistics.median(times)
            reference = reference or p50
            results.setdefault(path, p50)
            log(f"{label:<26} {p50:>8.1f} {max(times):>8.1f} {queries:>8} {p50 / reference:>12.1f}")
        overview = results["/rollouts/dashboards/"]
        log(f"overview p50 under {TARGET_MS} ms: {'yes' if overview < TARGET_MS else 'no'} ({overview:.0f} ms)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
