#!/usr/bin/env python3
"""Queue page benchmark: 500 workflows, an approver scoped to 50 of them, and 100 / 1,000 / 10,000
pending requests spread over all workflows. Prints the page time (median and worst of the runs,
full page and the htmx refresh) and the number of SQL queries per page at each size.
Target: under 150 ms, and a query count that does not grow with the number of requests.

    .venv/bin/python bench/approvals_queue_page.py          # BENCH_RUNS=10 page loads per size

Works in its own scratch database (ringfence_bench_queue), created, migrated and dropped here.
Rows are bulk-inserted (the setup is not what is measured); the page is served by Django's test
client through the whole middleware stack.
"""

from __future__ import annotations

import datetime as dt
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from export import log, scratch_database  # noqa: E402  (bench/ is the script's directory)

SIZES = [int(n) for n in os.environ.get("BENCH_SIZES", "100,1000,10000").split(",")]
RUNS = int(os.environ.get("BENCH_RUNS", "10"))
WORKFLOWS, SCOPED = 500, 50
TARGET_MS = 150


def setup_world():
    from django.contrib.auth.models import Group, User
    from guardian.shortcuts import assign_perm

    from governance.models import ServiceAccount, Workflow

    owner = User.objects.create_user("bench-owner", "owner@example.com", "x")
    approver = User.objects.create_user("bench-approver", "approver@example.com", "x")
    approver.groups.add(Group.objects.get(name="approver"))
    Workflow.objects.bulk_create([Workflow(slug=f"wf-{i:03d}", name=f"Workflow {i}") for i in range(WORKFLOWS)])
    workflows = list(Workflow.objects.order_by("slug"))
    scoped = Workflow.objects.filter(pk__in=[w.pk for w in workflows[:SCOPED]])
    for codename in ("view_workflow", "approve_workflow"):
        assign_perm(f"governance.{codename}", approver, scoped)
    agent = ServiceAccount.objects.create(name="bench-agent", owner=owner)
    return approver, agent, workflows


def add_requests(agent, workflows, start: int, count: int) -> None:
    from django.db import connection

    from approvals.models import ApprovalRequest, EscalationPolicy
    from core import clock

    policy = EscalationPolicy.objects.get(workflow__isnull=True, mode="gate", hours="any")
    now = clock.now()
    rows = [
        ApprovalRequest(
            workflow=workflows[i % WORKFLOWS], kind="agent_action", action="refund_customer",
            parameters={"order": f"A-{i}"}, confidence="0.8", requested_by_service=agent,
            on_behalf_of_id=agent.owner_id,
            requester_label=agent.name, mode="gate", policy=policy, level=0, quorum=1, state="pending",
            due_at=now + dt.timedelta(seconds=60 + (i * 7) % 3600), created_at=now,
            evidence={"summary": "refund above limit",
                      "metrics": [{"metric": "refund_amount", "value": 100 + i % 400, "operator": ">",
                                   "threshold": 50}]},
        )
        for i in range(start, start + count)
    ]
    ApprovalRequest.objects.bulk_create(rows, batch_size=2000)
    with connection.cursor() as cursor:  # what autovacuum would do after a bulk load
        cursor.execute("ANALYZE approvals_approvalrequest")


def measure(client, path: str, **headers) -> tuple[list[float], int, int]:
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    client.get(path, **headers)  # warm
    times = []
    for _ in range(RUNS):
        started = time.perf_counter()
        response = client.get(path, **headers)
        times.append((time.perf_counter() - started) * 1000)
        assert response.status_code == 200, response.status_code
    with CaptureQueriesContext(connection) as queries:
        response = client.get(path, **headers)
    rows = response.content.decode().count('class="queue-row')
    return times, len(queries), rows


def main() -> int:
    with scratch_database("ringfence_bench_queue"):
        from django.test import Client

        from approvals import selectors
        from approvals.models import ApprovalRequest

        approver, agent, workflows = setup_world()
        client = Client()
        client.force_login(approver)
        log(f"queue page: {WORKFLOWS} workflows, approver scoped to {SCOPED}, {RUNS} loads per size, "
            f"{selectors.QUEUE_LIMIT} rows shown; load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
        log(f"{'pending':>8} {'in scope':>9} {'rows':>5} {'page p50 ms':>12} {'page max':>9} "
            f"{'htmx p50 ms':>12} {'queries':>8}")
        counts, ok, total = set(), True, 0
        for size in SIZES:
            add_requests(agent, workflows, total, size - total)
            total = size
            in_scope = ApprovalRequest.objects.filter(workflow__in=workflows[:SCOPED]).count()
            page, queries, rows = measure(client, "/approvals/")
            htmx, htmx_queries, _ = measure(client, "/approvals/", HTTP_HX_REQUEST="true")
            counts.add(queries)
            p50 = statistics.median(page)
            ok &= p50 < TARGET_MS
            log(f"{size:>8} {in_scope:>9} {rows:>5} {p50:>12.1f} {max(page):>9.1f} {statistics.median(htmx):>12.1f} "
                f"{queries:>4}/{htmx_queries}")
        log(f"query count constant across sizes: {'yes' if len(counts) == 1 else 'no: ' + str(sorted(counts))}; "
            f"page p50 under {TARGET_MS} ms at every size: {'yes' if ok else 'no'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
