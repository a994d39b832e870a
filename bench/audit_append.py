#!/usr/bin/env python3
"""Audit append benchmark: appends/s and p50/p99 latency through `audit.log.record()` with
1, 4 and 16 writers, beside a raw-SQL chain append (advisory lock, head, insert, commit) in the
same run, and the ratio between them. Target: record() at least 70 % of the raw ceiling.

    .venv/bin/python bench/audit_append.py          # BENCH_SECONDS=4 per variant and writer count

Both variants append one event per transaction from writer threads, each with its own
connection, to a table of the same shape (the raw one is a copy of governance_auditevent with
its constraints), so the difference is what record() adds: normalising the data, the canonical
JSON, the ORM. Works in its own scratch database (ringfence_bench_append), created, migrated and
dropped here.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from export import log, scratch_database  # noqa: E402  (bench/ is the script's directory)

WRITERS = [int(n) for n in os.environ.get("BENCH_WRITERS", "1,4,16").split(",")]
SECONDS = float(os.environ.get("BENCH_SECONDS", "4"))  # per variant and writer count
ROUNDS = int(os.environ.get("BENCH_ROUNDS", "4"))  # alternating slices per measurement
TARGET = 0.70
DATA = {"verdict": "approve", "amount": "120.50", "level": 1}


def record_append(writer: int, n: int) -> None:
    from django.db import transaction

    from audit import log as audit

    with transaction.atomic():
        audit.record(f"bench-writer-{writer}", "bench.appended", ("bench.item", n), data=DATA, reason="benchmark",
                     workflow="refund-agent")


def raw_append_factory(url: str):
    """The reference: the four statements of a chain append and nothing else."""
    import psycopg

    from audit.log import AUDIT_LOCK_KEY
    from audit.verify_audit import GENESIS

    local = threading.local()
    insert = ("INSERT INTO bench_raw_chain (seq, occurred_at, actor_kind, actor_id, actor_label, action, subject_type, "
              "subject_id, workflow_slug, reason, data, canonical, prev_hash, hash) "
              "VALUES (%s, %s, 'system', '', %s, 'bench.appended', 'bench.item', %s, 'refund-agent', 'benchmark', %s, "
              "%s, %s, %s)")
    data = json.dumps(DATA)

    def append(writer: int, n: int) -> None:
        conn = getattr(local, "conn", None)
        if conn is None:
            conn = local.conn = psycopg.connect(url)
        now = dt.datetime.now(dt.UTC)
        with conn.transaction(), conn.cursor() as cur:
            cur.execute("SELECT pg_advisory_xact_lock(%s)", [AUDIT_LOCK_KEY + 1])
            cur.execute("SELECT seq, hash FROM bench_raw_chain ORDER BY seq DESC LIMIT 1")
            head = cur.fetchone()
            seq, prev = (head[0] + 1, head[1]) if head else (1, GENESIS)
            canonical = json.dumps({"seq": seq, "at": now.isoformat(), "actor": f"bench-writer-{writer}",
                                    "subject": n, "data": DATA}, sort_keys=True, separators=(",", ":"))
            digest = hashlib.sha256(bytes.fromhex(prev) + canonical.encode()).hexdigest()
            cur.execute(insert, [seq, now, f"bench-writer-{writer}", str(n), data, canonical, prev, digest])

    def close() -> None:
        if getattr(local, "conn", None) is not None:
            local.conn.close()

    return append, close


def measure(writers: int, append, close, seconds: float) -> tuple[int, float, list[float]]:
    """`writers` threads released together, appending for `seconds`; per-append latency incl. COMMIT."""
    barrier = threading.Barrier(writers + 1)
    stop = threading.Event()
    latencies: list[list[float]] = [[] for _ in range(writers)]
    errors: list[BaseException] = []

    def run(index: int) -> None:
        try:
            barrier.wait()
            n = 0
            while not stop.is_set():
                t0 = time.perf_counter()
                append(index, n)
                latencies[index].append(time.perf_counter() - t0)
                n += 1
        except BaseException as exc:
            errors.append(exc)
        finally:
            close()

    threads = [threading.Thread(target=run, args=(i,)) for i in range(writers)]
    for thread in threads:
        thread.start()
    barrier.wait()
    started = time.perf_counter()
    time.sleep(seconds)
    stop.set()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - started
    if errors:
        raise errors[0]
    flat = [lat for per in latencies for lat in per]
    return len(flat), elapsed, flat


def compare(writers: int, variants: dict) -> dict[str, dict]:
    """Alternate the variants in short slices (ROUNDS of them, order flipped every round) so that
    both see the same background load; sum the slices."""
    totals = {name: [0, 0.0, []] for name in variants}
    for round_ in range(ROUNDS):
        for name in (list(variants) if round_ % 2 == 0 else list(reversed(variants))):
            appends, elapsed, latencies = measure(writers, *variants[name], SECONDS / ROUNDS)
            totals[name][0] += appends
            totals[name][1] += elapsed
            totals[name][2] += latencies
    results = {}
    for name, (appends, elapsed, latencies) in totals.items():
        latencies.sort()

        def pick(p: float, latencies: list[float] = latencies) -> float:
            return latencies[min(len(latencies) - 1, int(p * len(latencies)))] * 1000

        results[name] = {"appends": appends, "rate": appends / elapsed, "p50": pick(0.50), "p99": pick(0.99)}
    return results


def main() -> int:
    with scratch_database("ringfence_bench_append") as url:
        from django.db import connection, connections

        from audit import log as audit

        with connection.cursor() as cursor:
            cursor.execute("CREATE TABLE bench_raw_chain (LIKE governance_auditevent INCLUDING ALL)")
        connections.close_all()
        raw_append, raw_close = raw_append_factory(url.replace("postgres://", "postgresql://", 1))

        def record_close() -> None:
            connection.close()

        log(f"audit append: {SECONDS:.0f} s per variant and writer count in {ROUNDS} alternating slices, "
            f"writers {WRITERS}, PostgreSQL at {url.rsplit('@', 1)[-1]}")
        log(f"{'writers':>7} | {'raw appends/s':>13} {'p50 ms':>7} {'p99 ms':>7} | "
            f"{'record() /s':>11} {'p50 ms':>7} {'p99 ms':>7} | {'ratio':>6}")
        worst = None
        for writers in WRITERS:
            measured = compare(writers, {"raw": (raw_append, raw_close), "record": (record_append, record_close)})
            raw, rec = measured["raw"], measured["record"]
            ratio = rec["rate"] / raw["rate"]
            worst = ratio if worst is None else min(worst, ratio)
            log(f"{writers:>7} | {raw['rate']:>13,.0f} {raw['p50']:>7.2f} {raw['p99']:>7.2f} | "
                f"{rec['rate']:>11,.0f} {rec['p50']:>7.2f} {rec['p99']:>7.2f} | {ratio:>6.0%}")

        report = audit.verify_database()
        with connection.cursor() as cursor:
            cursor.execute("SELECT count(*), max(seq), count(*) - count(DISTINCT prev_hash) FROM bench_raw_chain")
            raw_events, raw_head, raw_forks = cursor.fetchone()
        log(f"record() chain: {report.summary().splitlines()[0]}")
        log(f"raw chain: {raw_events} events, head #{raw_head}, forks {raw_forks}, gaps {raw_head - raw_events}")
        verdict = "meets" if worst >= TARGET else "MISSES"
        log(f"lowest ratio record()/raw: {worst:.0%} — {verdict} the {TARGET:.0%} target")
        connections.close_all()
        return 0 if report.ok and raw_forks == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
