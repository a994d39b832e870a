#!/usr/bin/env python3
"""Approval timers: their lag (from `due_at` to the audited transition, p50 and p99) as production
runs them, and the sweep's throughput, each beside a reference measured in the same run.

    .venv/bin/python bench/approvals_sweep.py           # 600 timers over 20 s; 1,000 for the sweep
    .venv/bin/python bench/approvals_sweep.py --quick   # a sanity run

1. Timer lag. A Celery worker (prefork, `--workers` processes), beat (its sweep every
   TIMER_SWEEP_SECONDS, `--sweep-seconds`) and a `manage.py audit_sequencer` process run against
   the scratch database and Redis database 11, as in production (AUDIT_SEQUENCER=background).
   `--lag-timers` pending gate requests come due, evenly spread over `--lag-seconds`; each one's
   last level runs out, so its timer expires it (`approval.expired`).
   - reference, the bare timer: a Celery message at the due time running one durable INSERT: the
     least any timer must do (the broker's ETA delivery, a worker slot, a commit);
   - the approval timers with their messages published at `due_at` (approvals.messages.schedule_timer,
     what create_request does): the precise path;
   - the same with every message lost: only the sweep fires them, at most TIMER_SWEEP_SECONDS late.
   Lag is measured to the audited transition (the occurred_at of its audit entry, recorded in the
   transition's transaction) and to the entry's place in the log (the event's sequenced_at).
2. Sweep throughput: overdue timers handled per second by `handle_all_due` (each one a locked,
   audited transition in its own transaction) with 1 and 2 sweepers, beside the least an audited
   timer transition must do, in raw SQL at the same sweeper count (one transaction per timer: lock
   the next due row with SKIP LOCKED, change its state, insert an audit entry of the same width,
   commit), and the previous reference, a raw `UPDATE … FOR UPDATE SKIP LOCKED LIMIT 100` loop with
   no record. Also checks that every timer fired exactly once.

Works in its own scratch database (ringfence_bench_sweep), created, migrated and dropped here, and in
Redis database 11 (RINGFENCE_BENCH_REDIS_URL), emptied at the start and at the end. The module is
also imported by the bench's Celery worker, for the bare timer's task.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from celery import shared_task

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.append(str(Path(__file__).resolve().parent))  # `export` when the worker imports bench.approvals_sweep

from export import (  # noqa: E402
    BENCH_REDIS_URL,
    empty_redis,
    log,
    percentile,
    scratch_database,
    sequencer_process,
)

PROBE_TASK = "bench.approvals_sweep.timer_probe"


@shared_task(name=PROBE_TASK, acks_late=True)
def timer_probe(n: int) -> None:
    """The bare timer: one durable INSERT when its message is delivered."""
    from django.db import connection, transaction

    from core import clock

    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute("INSERT INTO bench_timer_probe (n, fired_at) VALUES (%s, %s)", [n, clock.now()])


# -- requests ----------------------------------------------------------------------------------

def requests_due(count: int, first: dt.datetime, spacing: dt.timedelta = dt.timedelta(0)) -> dict[int, dt.datetime]:
    """`count` pending gate requests whose only level runs out at `first`, `first + spacing`, …
    (each will expire); returns their ids and due times."""
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
    spacing = spacing or dt.timedelta(microseconds=1)
    made = ApprovalRequest.objects.bulk_create([
        ApprovalRequest(workflow=workflow, kind="agent_action", action="refund_customer", requested_by_service=agent,
                        on_behalf_of_id=owner.pk, requester_label=agent.name, mode="gate", policy=policy, level=0,
                        quorum=1, state="pending", due_at=first + spacing * i, created_at=clock.now())
        for i in range(count)
    ], batch_size=5000)
    with connection.cursor() as cursor:
        cursor.execute("ANALYZE approvals_approvalrequest")
    return {req.pk: req.due_at for req in made}


# -- 1. timer lag --------------------------------------------------------------------------------

def spawn(argv: list[str], log_path: Path) -> subprocess.Popen:
    with open(log_path, "ab") as out:
        return subprocess.Popen(argv, cwd=ROOT, env={**os.environ, "PYTHONUNBUFFERED": "1"}, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def wait_for_worker(name: str, proc: subprocess.Popen, log_path: Path) -> None:
    from config.celery import app

    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"the Celery worker exited ({proc.returncode}); see {log_path}")
        if app.control.ping(destination=[name], timeout=1.0):
            return
    raise SystemExit(f"the Celery worker did not answer within 90 s; see {log_path}")


def wait_until(done, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not done():
        if time.monotonic() > deadline:
            raise SystemExit(f"{what}: not done after {timeout:.0f} s")
        time.sleep(0.1)


def stats(lags: list[float]) -> str:
    ms = [lag * 1000 for lag in lags]
    return (f"{percentile(ms, 50):>8.0f} {percentile(ms, 99):>8.0f} {max(ms, default=float('nan')):>8.0f}"
            if ms else f"{'—':>8} {'—':>8} {'—':>8}")


def bare_timers(count: int, first: dt.datetime, spacing: dt.timedelta) -> list[float]:
    """The reference: `count` probe messages at the same due times; lag = fired_at - due."""
    from django.db import connection

    from core.publishing import publish

    due = {n: first + spacing * n for n in range(count)}
    for n, at in due.items():
        publish(PROBE_TASK, (n,), eta=at)

    def fired() -> int:
        with connection.cursor() as cursor:
            cursor.execute("SELECT count(*) FROM bench_timer_probe")
            return cursor.fetchone()[0] >= count

    wait_until(fired, (first + spacing * count - dt.datetime.now(dt.UTC)).total_seconds() + 60, "bare timers")
    with connection.cursor() as cursor:
        cursor.execute("SELECT n, fired_at FROM bench_timer_probe")
        return [(fired_at - due[n]).total_seconds() for n, fired_at in cursor.fetchall()]


def approval_timers(count: int, first: dt.datetime, spacing: dt.timedelta, *, messages: bool,
                    sweep_seconds: float) -> tuple[list[float], list[float], int]:
    """`count` requests due at the same times, with or without their timer messages; returns the lags
    to the audited transition and to the log, and how many were expired more than once."""
    from django.db import connection

    from approvals import messages as approval_messages
    from approvals.models import ApprovalRequest

    due = requests_due(count, first, spacing)
    if messages:
        for request_id, at in due.items():
            approval_messages.schedule_timer(request_id, 0, at)
    ids = list(due)
    wait_until(lambda: not ApprovalRequest.objects.pending().filter(pk__in=ids).exists(),
               (first + spacing * count - dt.datetime.now(dt.UTC)).total_seconds() + sweep_seconds + 60,
               "approval timers")

    def placed() -> bool:
        with connection.cursor() as cursor:
            cursor.execute("SELECT count(*) FROM audit_entry AS e WHERE NOT EXISTS "
                           "(SELECT 1 FROM governance_auditevent AS ev WHERE ev.entry_id = e.id)")
            return cursor.fetchone()[0] == 0

    wait_until(placed, 60, "the sequencer placing the entries")
    with connection.cursor() as cursor:
        cursor.execute("""
            SELECT r.id, min(e.occurred_at), min(ev.sequenced_at), count(*)
            FROM approvals_approvalrequest AS r
            JOIN audit_entry AS e ON e.action = 'approval.expired'
             AND e.canonical::jsonb -> 'subject' = jsonb_build_object('type', 'approvals.approvalrequest',
                                                                      'id', r.id::text)
            LEFT JOIN governance_auditevent AS ev ON ev.entry_id = e.id
            WHERE r.id = ANY(%s) GROUP BY r.id""", [ids])
        rows = cursor.fetchall()
    if len(rows) != count:
        raise SystemExit(f"{count - len(rows)} of {count} approval timers have no approval.expired entry")
    audited = [(occurred - due[pk]).total_seconds() for pk, occurred, _, _ in rows]
    in_log = [(sequenced - due[pk]).total_seconds() for pk, _, sequenced, _ in rows]
    return audited, in_log, sum(1 for *_, n in rows if n != 1)


def timer_lag(args: argparse.Namespace, var_dir: Path) -> bool:
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("CREATE TABLE bench_timer_probe (n integer PRIMARY KEY, fired_at timestamptz NOT NULL)")
    name = f"bench-sweep-{os.getpid()}@localhost"
    worker_log, beat_log = var_dir / "worker.log", var_dir / "beat.log"
    worker = spawn([sys.executable, "-m", "celery", "-A", "config", "worker", "--loglevel", "WARNING", "--pool",
                    "prefork", "--concurrency", str(args.workers), "--without-gossip", "--without-mingle",
                    "--without-heartbeat", "--include", "bench.approvals_sweep", "--hostname", name], worker_log)
    beat = None
    try:
        wait_for_worker(name, worker, worker_log)
        beat = spawn([sys.executable, "-m", "celery", "-A", "config", "beat", "--loglevel", "WARNING", "--schedule",
                      str(var_dir / "celerybeat-schedule"), "--max-interval", "1"], beat_log)
        spacing = dt.timedelta(seconds=args.lag_seconds / args.lag_timers)
        log(f"\n1. timer lag: {args.lag_timers} timers due over {args.lag_seconds:g} s "
            f"({1 / spacing.total_seconds():.0f}/s), a Celery worker of {args.workers} processes, beat sweeping every "
            f"{args.sweep_seconds:g} s, a sequencer process")
        log(f"{'':50} {'timers':>6} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8} | in the log p50 / p99 ms")

        def start() -> dt.datetime:
            return dt.datetime.now(dt.UTC) + dt.timedelta(seconds=2)  # every message is published before its time

        bare = bare_timers(args.lag_timers, start(), spacing)
        log(f"{'bare timer: ETA message → one durable INSERT':<50} {len(bare):>6} {stats(bare)} |")
        audited, in_log, twice = approval_timers(args.lag_timers, start(), spacing, messages=True,
                                                 sweep_seconds=args.sweep_seconds)
        log(f"{'approval timers, message at due_at (production)':<50} {len(audited):>6} {stats(audited)} | "
            f"{percentile(in_log, 50) * 1000:.0f} / {percentile(in_log, 99) * 1000:.0f}")
        extra50 = (percentile(audited, 50) - percentile(bare, 50)) * 1000
        extra99 = (percentile(audited, 99) - percentile(bare, 99)) * 1000
        log(f"{'':50} over the bare timer: p50 {extra50:+.0f} ms, p99 {extra99:+.0f} ms "
            f"({percentile(audited, 99) / percentile(bare, 99):.1f}× its p99)")
        lost, lost_in_log, lost_twice = approval_timers(args.lag_timers, start(), spacing, messages=False,
                                                        sweep_seconds=args.sweep_seconds)
        log(f"{'approval timers, messages lost (the sweep alone)':<50} {len(lost):>6} {stats(lost)} | "
            f"{percentile(lost_in_log, 50) * 1000:.0f} / {percentile(lost_in_log, 99) * 1000:.0f}")
        bounded = max(lost) <= args.sweep_seconds + 1
        log(f"{'':50} {'within' if bounded else 'BEYOND'} the sweep interval ({args.sweep_seconds:g} s) + 1 s; "
            f"expired more than once: {twice + lost_twice}")
        return twice + lost_twice == 0  # the bound is a figure; firing twice is a fault
    finally:
        if beat is not None:
            stop(beat)
        stop(worker)


# -- 2. sweep throughput ---------------------------------------------------------------------------

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


def raw_audited_factory():
    """The reference: the least an audited timer transition must do, one per transaction."""
    from django.db import connection, transaction

    from audit import log as audit
    from audit import sequencing
    from core import clock

    canonical = audit.unsequenced_canonical({
        "occurred_at": clock.now(), "actor_kind": "system", "actor_id": "", "actor_label": "system:timer",
        "action": "approval.expired", "subject_type": "approvals.approvalrequest", "subject_id": "100000",
        "workflow_slug": "bench-sweep", "reason": "", "data": audit.normalize({"level": 0, "due_at": clock.now()})})
    mac = sequencing.entry_mac(canonical)
    fire = ("UPDATE approvals_approvalrequest AS r SET state = 'expired', closed_at = now() FROM ("
            "SELECT id FROM approvals_approvalrequest WHERE state = 'pending' AND due_at <= now() "
            "ORDER BY due_at LIMIT 1 FOR UPDATE SKIP LOCKED) AS due WHERE r.id = due.id RETURNING r.id")
    record = ("INSERT INTO bench_raw_entry (xid, occurred_at, action, canonical, mac) "
              "VALUES (pg_current_xact_id()::text::bigint, now(), 'approval.expired', %s, %s)")

    def until_done() -> None:
        while True:
            with transaction.atomic(), connection.cursor() as cursor:
                cursor.execute(fire)
                if cursor.fetchone() is None:
                    return
                cursor.execute(record, [canonical, mac])

    return until_done


def raw_batch_until_done() -> None:
    from django.db import connection, transaction

    sql = ("UPDATE approvals_approvalrequest SET state = 'expired', closed_at = now() WHERE id IN ("
           "SELECT id FROM approvals_approvalrequest WHERE state = 'pending' AND due_at <= now() "
           "ORDER BY due_at LIMIT 100 FOR UPDATE SKIP LOCKED)")
    while True:
        with transaction.atomic(), connection.cursor() as cursor:
            cursor.execute(sql)
            if cursor.rowcount == 0:
                return


def sweep_throughput(args: argparse.Namespace) -> bool:
    from django.db import connection

    from approvals.models import ApprovalRequest
    from audit.models import AuditEntry
    from core import clock

    with connection.cursor() as cursor:
        cursor.execute("CREATE TABLE bench_raw_entry (LIKE audit_entry INCLUDING ALL)")
    raw_audited = raw_audited_factory()
    log(f"\n2. sweep throughput: overdue timers handled per second (load average {os.getloadavg()[0]:.1f})")
    log(f"{'variant':<44} {'sweepers':>8} {'timers':>7} {'seconds':>8} {'timers/s':>9} {'fired once':>10}")
    ok, audited_rates, reference_rates = True, {}, {}
    for n in args.sweepers:
        requests_due(args.timers, clock.now() - dt.timedelta(minutes=1))
        before = AuditEntry.objects.filter(action="approval.expired").count()
        seconds = run_threads(n, sweep_until_done)
        expired = AuditEntry.objects.filter(action="approval.expired").count() - before
        left = ApprovalRequest.objects.pending().count()
        once = expired == args.timers and left == 0
        ok &= once
        audited_rates[n] = args.timers / seconds
        log(f"{'handle_all_due (audited)':<44} {n:>8} {args.timers:>7} {seconds:>8.2f} {audited_rates[n]:>9.0f} "
            f"{'yes' if once else f'no ({expired} entries, {left} left)':>10}")
    for n in args.sweepers:
        requests_due(args.timers, clock.now() - dt.timedelta(minutes=1))
        seconds = run_threads(n, raw_audited)
        left = ApprovalRequest.objects.pending().count()
        reference_rates[n] = args.timers / seconds
        log(f"{'reference: raw, 1 per transaction + entry':<44} {n:>8} {args.timers:>7} {seconds:>8.2f} "
            f"{reference_rates[n]:>9.0f} {'yes' if left == 0 else f'no ({left} left)':>10}")
    for n in args.sweepers:
        requests_due(args.raw, clock.now() - dt.timedelta(minutes=1))
        seconds = run_threads(n, raw_batch_until_done)
        left = ApprovalRequest.objects.pending().count()
        log(f"{'raw SKIP LOCKED UPDATE, batch 100, no record':<44} {n:>8} {args.raw:>7} {seconds:>8.2f} "
            f"{args.raw / seconds:>9.0f} {'yes' if left == 0 else f'no ({left} left)':>10}")
    for n in args.sweepers:
        log(f"handle_all_due / reference with {n} sweeper{'s' if n > 1 else ''}: "
            f"{audited_rates[n] / reference_rates[n]:.0%}")
    return ok


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--lag-timers", type=int, default=600, help="timers per lag phase (default 600)")
    parser.add_argument("--lag-seconds", type=float, default=20.0, help="over which they come due (default 20)")
    parser.add_argument("--workers", type=int, default=2, help="Celery worker processes (default 2)")
    parser.add_argument("--sweep-seconds", type=float, default=5.0, help="TIMER_SWEEP_SECONDS (default 5)")
    parser.add_argument("--timers", type=int, default=int(os.environ.get("BENCH_TIMERS", "1000")),
                        help="overdue timers per sweep throughput run (default 1000)")
    parser.add_argument("--raw", type=int, default=int(os.environ.get("BENCH_RAW", "20000")),
                        help="timers for the raw batch UPDATE (default 20000)")
    parser.add_argument("--sweepers", default=os.environ.get("BENCH_SWEEPERS", "1,2"))
    parser.add_argument("--quick", action="store_true", help="a sanity run: 60 timers over 4 s, 200 and 2,000 swept")
    args = parser.parse_args()
    if args.quick:
        args.lag_timers, args.lag_seconds, args.timers, args.raw = 60, 4.0, 200, 2000
    args.sweepers = [int(n) for n in args.sweepers.split(",")]

    redis_url = os.environ.get("RINGFENCE_BENCH_REDIS_URL", BENCH_REDIS_URL)
    os.environ.update(AUDIT_SEQUENCER="background", CELERY_BROKER_URL=redis_url, REDIS_URL=redis_url,
                      TIMER_SWEEP_SECONDS=str(args.sweep_seconds),
                      EMAIL_BACKEND="django.core.mail.backends.locmem.EmailBackend")
    empty_redis(redis_url)  # refuses the test suite's database 0
    try:
        with scratch_database("ringfence_bench_sweep"):
            var_dir = Path(os.environ["RINGFENCE_VAR_DIR"])
            (var_dir / "staticfiles").mkdir(exist_ok=True)
            log(f"approval timers: {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}; "
                f"AUDIT_SEQUENCER=background; worker and beat logs in {var_dir}")
            with sequencer_process(log_path=var_dir / "sequencer.log"):
                lag_ok = timer_lag(args, var_dir)  # first: the sweep's thousands of closed requests come after
                sweep_ok = sweep_throughput(args)
            from django.db import connections

            connections.close_all()
    finally:
        left = empty_redis(redis_url)
        log(f"Redis {redis_url}: {left} key(s) the run left (outcome and notice messages of the swept timers), "
            "now emptied")
    return 0 if lag_ok and sweep_ok else 1


if __name__ == "__main__":
    sys.exit(main())
