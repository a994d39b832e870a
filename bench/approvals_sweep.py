#!/usr/bin/env python3
"""Timer sweep benchmark: overdue approval timers handled per second by `handle_all_due` (each one a
locked, audited transition in its own transaction) with 1 and 2 sweepers, beside a raw
`UPDATE … WHERE id IN (SELECT … FOR UPDATE SKIP LOCKED LIMIT 100)` loop over the same kind of rows
in the same run. Also checks that every timer fired exactly once.

    .venv/bin/python bench/approvals_sweep.py        # BENCH_TIMERS=1000 (audited), BENCH_RAW=20000

Works in its own scratch database (ringfence_bench_sweep), created, migrated and dropped here.
"""

from __future__ import annotations

import datetime as dt
import os
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from export import log, scratch_database  # noqa: E402  (bench/ is the script's directory)

TIMERS = int(os.environ.get("BENCH_TIMERS", "1000"))
RAW = int(os.environ.get("BENCH_RAW", "20000"))
SWEEPERS = [int(n) for n in os.environ.get("BENCH_SWEEPERS", "1,2").split(",")]


def overdue(count: int) -> None:
    """`count` pending gate requests whose only level ran out a minute ago (each will expire)."""
    from django.contrib.auth.models import User
    from django.db import connection

    from approvals.models import ApprovalRequest, EscalationLevel, EscalationPolicy
    from core import clock
    from governance.models import ServiceAccount, Workflow

    workflow, _ = Workflow.objects.get_or_create(slug="bench-sweep", defaults={"name": "Bench sweep"})
    policy, created = EscalationPolicy.objects.get_or_create(workflow=workflow, hours="any", mode="gate",
                                                             defaults={"terminal_action": "reject"})
    if created:
        EscalationLevel.objects.create(policy=policy, position=0, timeout_seconds=60)
    owner, _ = User.objects.get_or_create(username="bench-owner")
    agent, _ = ServiceAccount.objects.get_or_create(name="bench-agent", defaults={"owner": owner})
    past = clock.now() - dt.timedelta(minutes=1)
    ApprovalRequest.objects.bulk_create([
        ApprovalRequest(workflow=workflow, kind="agent_action", action="refund_customer", requested_by_service=agent,
                        on_behalf_of_id=owner.pk, requester_label=agent.name, mode="gate", policy=policy, level=0,
                        quorum=1, state="pending", due_at=past + dt.timedelta(microseconds=i), created_at=past)
        for i in range(count)
    ], batch_size=5000)
    with connection.cursor() as cursor:
        cursor.execute("ANALYZE approvals_approvalrequest")


def run_threads(n: int, target) -> float:
    from django.db import connection

    def worker() -> None:
        try:
            target()
        finally:
            connection.close()

    threads = [threading.Thread(target=worker) for _ in range(n)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return time.perf_counter() - started


def sweep_until_done() -> None:
    from approvals import services

    while services.handle_all_due(limit=200):
        pass


def raw_until_done() -> None:
    from django.db import connection, transaction

    sql = ("UPDATE approvals_approvalrequest SET state = 'expired', closed_at = now() WHERE id IN ("
           "SELECT id FROM approvals_approvalrequest WHERE state = 'pending' AND due_at <= now() "
           "ORDER BY due_at LIMIT 100 FOR UPDATE SKIP LOCKED)")
    while True:
        with transaction.atomic(), connection.cursor() as cursor:
            cursor.execute(sql)
            if cursor.rowcount == 0:
                return


def main() -> int:
    with scratch_database("ringfence_bench_sweep"):
        from approvals.models import ApprovalRequest
        from audit.models import AuditEvent

        log(f"timer sweep: load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
        log(f"{'variant':<34} {'sweepers':>8} {'timers':>7} {'seconds':>8} {'timers/s':>9} {'fired once':>10}")
        for n in SWEEPERS:
            overdue(TIMERS)
            events_before = AuditEvent.objects.filter(action="approval.expired").count()
            seconds = run_threads(n, sweep_until_done)
            expired = AuditEvent.objects.filter(action="approval.expired").count() - events_before
            left = ApprovalRequest.objects.pending().count()
            once = "yes" if expired == TIMERS and left == 0 else f"no ({expired} events, {left} left)"
            log(f"{'handle_all_due (audited)':<34} {n:>8} {TIMERS:>7} {seconds:>8.2f} "
                f"{TIMERS / seconds:>9.0f} {once:>10}")
        for n in SWEEPERS:
            overdue(RAW)
            seconds = run_threads(n, raw_until_done)
            left = ApprovalRequest.objects.pending().count()
            log(f"{'raw SKIP LOCKED UPDATE, batch 100':<34} {n:>8} {RAW:>7} {seconds:>8.2f} {RAW / seconds:>9.0f} "
                f"{'yes' if left == 0 else f'no ({left} left)':>10}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
