#!/usr/bin/env python3
"""Signal ingest benchmark: samples/s through `POST /api/v1/signals` (parse, validate, authorise,
one bulk INSERT … ON CONFLICT DO NOTHING) and through `rollouts.signals.ingest_signals` alone,
beside a raw `COPY` of the same rows into the same table in the same run, and the ratios.

    .venv/bin/python bench/signals.py          # BENCH_BATCHES=20 batches of BENCH_BATCH=10000

Every variant writes to `rollouts_signal` itself (its unique key, finite-value check and foreign
keys included), each into a plan of its own so that no sample is a duplicate. The API variant
runs in-process through Django's test client with a real bearer token, so HTTP parsing is not
counted. Works in its own scratch database (ringfence_bench_signals), created, migrated and dropped.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import random
import sys
import time
from collections.abc import Callable
from pathlib import Path

import psycopg

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from export import log, scratch_database  # noqa: E402  (bench/ is the script's directory)

BATCH = int(os.environ.get("BENCH_BATCH", "10000"))
BATCHES = int(os.environ.get("BENCH_BATCHES", "20"))
METRICS = ["latency_p95_ms", "quality_score", "cost_per_task", "error_rate"]
SEGMENTS = [f"customer_group:group-{i}" for i in range(25)]


def setup() -> dict:
    """A workflow with owners for every duty, three live plans (one per variant), an agent token."""
    from django.contrib.auth.models import Group, User

    from governance import services as governance
    from governance.models import ContainmentAssignment
    from governance.permissions import Role
    from rollouts import plans as rollout_plans
    from rollouts.models import Metric

    admin = User.objects.create_user("bench-admin", password="x" * 20, is_staff=True)
    admin.groups.add(Group.objects.get(name=Role.ADMINISTRATOR))
    owner = User.objects.create_user("bench-owner", password="x" * 20)
    metric = {m.slug: m for m in Metric.objects.all()}
    plans = {}
    for variant in ("api", "service", "copy"):
        workflow = governance.create_workflow(actor=admin, slug=f"bench-{variant}", name=f"Bench {variant}",
                                              autonomy_tier=3)
        for duty in ContainmentAssignment.Duty.values:
            governance.assign_containment(workflow.pk, actor=admin, user=owner, duty=duty)
        plan = rollout_plans.create_plan(
            actor=admin, workflow=workflow,
            fields={"name": "bench", "release_version": "v2", "stable_version": "v1", "fallback_mode": "human_review",
                    "executor": "flag"},
            rings=[{"segment_kind": "traffic_slice", "segment_value": "all", "exposure_percent": 100,
                    "min_soak": dt.timedelta(days=1)},
                   {"segment_kind": "account_type", "segment_value": "pro", "exposure_percent": 100,
                    "min_soak": dt.timedelta(days=1), "approval_point": True}],
            criteria=[{"metric": metric["cost_per_task"], "operator": "lte", "threshold": 1,
                       "window": dt.timedelta(hours=1), "min_samples": 10}],
            triggers=[{"metric": metric["latency_p95_ms"], "operator": "gt", "threshold": 10_000,
                       "sustained_for": dt.timedelta(minutes=5), "min_samples": 3, "severity": "critical"}])
        plans[variant] = rollout_plans.start_rollout(plan.pk, actor=admin)
    account = governance.create_service_account(actor=admin, name="bench-agent", owner=owner,
                                                workflows=[p.workflow for p in plans.values()])
    token = governance.issue_token(account.pk, actor=admin).raw
    return {"plans": plans, "token": token, "metric_ids": {slug: m.pk for slug, m in metric.items()}}


def batches(seed: int) -> list[list[tuple[str, str, dt.datetime, float]]]:
    """BATCHES batches of BATCH distinct samples (metric, segment, time, value), all in the last hour."""
    rng = random.Random(seed)
    start = dt.datetime.now(dt.UTC) - dt.timedelta(hours=1)
    out, n = [], 0
    for _ in range(BATCHES):
        batch = []
        for _ in range(BATCH):
            batch.append((METRICS[n % 4], SEGMENTS[(n // 4) % 25], start + dt.timedelta(microseconds=n // 100),
                          round(rng.uniform(0, 1000), 3)))
            n += 1
        out.append(batch)
    return out


def api_variant(plan, token: str) -> Callable[[list], float]:
    from django.test import Client

    client = Client(headers={"Authorization": f"Bearer {token}"})

    def run(batch) -> float:
        body = json.dumps({"workflow": plan.workflow.slug, "samples": [
            {"metric": m, "segment": s, "observed_at": t.isoformat(), "value": v} for m, s, t, v in batch]})
        began = time.perf_counter()
        response = client.post("/api/v1/signals", body, content_type="application/json")
        seconds = time.perf_counter() - began
        assert response.status_code == 200 and response.json()["stored"] == BATCH, response.content[:300]
        return seconds
    return run


def service_variant(plan, metric_ids: dict) -> Callable[[list], float]:
    from rollouts import signals

    def run(batch) -> float:
        began = time.perf_counter()
        rows = [(metric_ids[m], 0, s, t, v) for m, s, t, v in batch]
        assert signals.ingest_signals(plan, rows).stored == BATCH
        return time.perf_counter() - began
    return run


def copy_variant(conn, plan, metric_ids: dict) -> Callable[[list], float]:
    """The reference: psycopg's text COPY of the same rows into the same table, a transaction a batch."""
    def run(batch) -> float:
        now = dt.datetime.now(dt.UTC)
        began = time.perf_counter()
        with conn.transaction(), conn.cursor() as cur, cur.copy(
                "COPY rollouts_signal (plan_id, metric_id, ring, segment, observed_at, value, received_at) "
                "FROM STDIN") as copy:
            for m, s, t, v in batch:
                copy.write_row((plan.pk, metric_ids[m], 0, s, t, v, now))
        return time.perf_counter() - began
    return run


def main() -> int:
    total = BATCH * BATCHES
    log(f"signal ingest: {BATCHES} batches of {BATCH:,} samples per variant ({total:,} each)")
    with scratch_database("ringfence_bench_signals") as url, psycopg.connect(url) as conn:
        context = setup()
        plans, ids = context["plans"], context["metric_ids"]
        variants = {
            "COPY (baseline)": (copy_variant(conn, plans["copy"], ids), batches(1)),
            "signals.ingest_signals": (service_variant(plans["service"], ids), batches(2)),
            "POST /api/v1/signals": (api_variant(plans["api"], context["token"]), batches(3)),
        }
        results = dict.fromkeys(variants, 0.0)
        for i in range(BATCHES):  # interleaved, batch by batch: load on the machine affects all alike
            for name, (run, data) in variants.items():
                results[name] += run(data[i])
        from rollouts.models import Signal

        assert Signal.objects.count() == 3 * total
    baseline = total / results["COPY (baseline)"]
    log(f"{'variant':<26}{'samples/s':>12}{'ms/batch':>10}{'vs COPY':>9}")
    for name, seconds in results.items():
        rate = total / seconds
        log(f"{name:<26}{rate:>12,.0f}{1000 * seconds / BATCHES:>10.1f}{rate / baseline:>9.2f}")
    log(f"ratio API / COPY = {total / results['POST /api/v1/signals'] / baseline:.2f}; "
        f"ratio service / COPY = {total / results['signals.ingest_signals'] / baseline:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
