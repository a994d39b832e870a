#!/usr/bin/env python3
"""Audit append benchmark: audited appends/s through `audit.log.record()` with 1, 4 and 16 writers in
background mode (a real `manage.py audit_sequencer` process places the entries in the log and the
Merkle tree), beside a raw single-row INSERT of the same width into a scratch table at the same
concurrency, in the same run; the same through the FLT-03 latency proxy (+1 ms RTT) with 4 writers;
inline mode (each record sequences its own entry under the global lock: the old ceiling) beside them;
and the sequencing lag (an event's sequenced_at less its entry's occurred_at), p50 and p99.

    .venv/bin/python bench/audit_append.py                 # 4 s per variant and writer count
    .venv/bin/python bench/audit_append.py --quick         # a sanity run in well under a minute

Goals (issue "Audit at scale"): record() ≥ 70 % of the raw INSERT at each writer count; ≥ 5× the old
280 appends/s through the proxy with 4 writers; sequencing lag ≤ 1 s (the maximum merge delay).

Every variant appends one row per transaction (BEGIN, INSERT, COMMIT: three round trips) from writer
threads of this process, each with its own connection. The raw reference inserts, with the very
statement record() uses, a precomputed entry of the same width (same columns, same canonical length)
into a copy of audit_entry with its indexes: what is left between them is what record() adds in
Python (describing actor and subject, normalising the data, the canonical JSON, the entry's MAC, the
ORM). The variants run in alternating slices (order flipped every round) so they meet the same
background load; after each background slice the bench waits for the sequencer to catch up before
the next slice starts, and that wait is not counted. The proxy runs in a process of its own (so its
event loop does not share the writers' interpreter) and, in that phase, the sequencer connects
through it too: the database is a millisecond away from everyone. Works in its own scratch database
(ringfence_bench_append), created, migrated and dropped here.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from export import log, percentile, scratch_database, sequencer_process  # noqa: E402  (bench/ is the script's directory)

OLD_CEILING = 280.0  # appends/s, FLT-03 with 4 writers at +1 ms RTT under the old global chain lock
GOALS = {"ratio": 0.70, "proxy_multiple": 5.0, "lag_s": 1.0}
DATA = {"verdict": "approve", "amount": "120.50", "level": 1}
DRAIN_TIMEOUT_S = 120.0


# -- the variants ------------------------------------------------------------------------------

@dataclass
class Variant:
    """One way of appending: `append(writer, n)` in a writer thread, `close()` at the thread's end;
    `sequenced` when its entries are placed by the sequencer process (their lag is measured)."""

    name: str
    append: Callable[[int, int], None]
    close: Callable[[], None]
    sequenced: bool = False
    appends: int = 0
    seconds: float = 0.0
    latencies: list[float] = field(default_factory=list)
    lags: list[float] = field(default_factory=list)
    drains: list[float] = field(default_factory=list)

    @property
    def rate(self) -> float:
        return self.appends / self.seconds if self.seconds else 0.0

    def ms(self, pct: float) -> float:
        return percentile(self.latencies, pct) * 1000


def record_variant(name: str, mode: str) -> Variant:
    """audit.log.record() in its own transaction, in `mode` (background: insert the entry; inline:
    also sequence it under the writers' global lock, as every audited write did before)."""
    from django.conf import settings
    from django.db import connection, transaction

    from audit import log as audit

    def append(writer: int, n: int) -> None:
        settings.AUDIT_SEQUENCER = mode  # read by record() at each call; every variant sets its own
        with transaction.atomic():
            audit.record(f"bench-writer-{writer}", "bench.appended", ("bench.item", n), data=DATA, reason="benchmark",
                         workflow="refund-agent")

    def close() -> None:
        connection.close()  # this thread's connection (django.db.connection resolves per thread)

    return Variant(name, append, close, sequenced=mode == "background")


def raw_variant(name: str, url: str) -> Variant:
    """The reference: record()'s INSERT, with an entry of the same width computed once, into a copy
    of audit_entry (its indexes included), one row per transaction."""
    import psycopg

    from audit import log as audit
    from audit import sequencing
    from core import clock

    canonical = audit.unsequenced_canonical({
        "occurred_at": clock.now(), "actor_kind": "system", "actor_id": "", "actor_label": "bench-writer-0",
        "action": "bench.appended", "subject_type": "bench.item", "subject_id": "1000", "workflow_slug": "refund-agent",
        "reason": "benchmark", "data": audit.normalize(DATA)})
    mac = sequencing.entry_mac(canonical)
    insert = ("INSERT INTO bench_raw_entry (xid, occurred_at, action, canonical, mac) "
              "VALUES (pg_current_xact_id()::text::bigint, %s, %s, %s, %s) RETURNING id")
    local = threading.local()

    def append(writer: int, n: int) -> None:
        conn = getattr(local, "conn", None)
        if conn is None:
            conn = local.conn = psycopg.connect(url, autocommit=True)
        with conn.transaction(), conn.cursor() as cur:
            cur.execute(insert, [clock.now(), "bench.appended", canonical, mac])
            cur.fetchone()

    def close() -> None:
        if getattr(local, "conn", None) is not None:
            local.conn.close()
            local.conn = None

    return Variant(name, append, close)


# -- measuring ---------------------------------------------------------------------------------

def run_slice(writers: int, variant: Variant, seconds: float) -> None:
    """`writers` threads released together, appending for `seconds`; latency per append incl. COMMIT."""
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
                variant.append(index, n)
                latencies[index].append(time.perf_counter() - t0)
                n += 1
        except BaseException as exc:
            errors.append(exc)
        finally:
            variant.close()

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
    variant.seconds += elapsed
    for per in latencies:
        variant.appends += len(per)
        variant.latencies += per


def last_entry_id() -> int:
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("SELECT coalesce(max(id), 0) FROM audit_entry")
        return cursor.fetchone()[0]


def wait_sequenced(after_id: int, variant: Variant) -> None:
    """Wait until every entry above `after_id` is in the log; keep their lags and the catch-up time."""
    from django.db import connection

    started = time.perf_counter()
    with connection.cursor() as cursor:
        while True:
            cursor.execute("SELECT count(*) FROM audit_entry AS e WHERE e.id > %s AND NOT EXISTS "
                           "(SELECT 1 FROM governance_auditevent AS ev WHERE ev.entry_id = e.id)", [after_id])
            if cursor.fetchone()[0] == 0:
                break
            if time.perf_counter() - started > DRAIN_TIMEOUT_S:
                raise SystemExit(f"the sequencer left entries unsequenced for {DRAIN_TIMEOUT_S:.0f} s")
            time.sleep(0.01)
        variant.drains.append(time.perf_counter() - started)
        cursor.execute("SELECT extract(epoch FROM sequenced_at - occurred_at)::float8 FROM governance_auditevent "
                       "WHERE entry_id > %s", [after_id])
        variant.lags += [row[0] for row in cursor.fetchall()]


def compare(writers: int, variants: list[Variant], seconds: float, rounds: int) -> None:
    """Alternate the variants in `rounds` slices each (order flipped every round), so that all see
    the same background load. A sequenced variant's slice is followed by the wait for its entries."""
    for round_ in range(rounds):
        for variant in (variants if round_ % 2 == 0 else list(reversed(variants))):
            mark = last_entry_id()
            run_slice(writers, variant, seconds / rounds)
            if variant.sequenced:
                wait_sequenced(mark, variant)


def lag_text(variant: Variant) -> str:
    if not variant.lags:
        return "—"
    return (f"{percentile(variant.lags, 50) * 1000:.0f} / {percentile(variant.lags, 99) * 1000:.0f} ms "
            f"(caught up {max(variant.drains) * 1000:.0f} ms after the writers stopped, at worst)")


def line(variant: Variant, reference: Variant | None = None) -> str:
    share = f"{variant.rate / reference.rate:6.0%} of {reference.name}" if reference else ""
    return (f"  {variant.name:<30} {variant.rate:>8,.0f} /s  p50 {variant.ms(50):6.2f} ms  p99 {variant.ms(99):6.2f} ms"
            f"  {share}")


# -- the latency proxy (a process of its own) ------------------------------------------------------

def serve_proxy(upstream_port: int, rtt_ms: float) -> None:
    """`--serve-proxy PORT RTT`: the reliability suite's TCP proxy (FLT-03) adding `rtt_ms` of round
    trip in front of PORT; prints its own port, runs until stdin closes."""
    from tests.reliability.proxy import TcpProxy

    proxy = TcpProxy(upstream_port).start()
    proxy.delay_ms = rtt_ms
    print(proxy.port, flush=True)
    sys.stdin.read()
    proxy.stop()


class LatencyProxy:
    def __init__(self, upstream_port: int, rtt_ms: float) -> None:
        self.proc = subprocess.Popen([sys.executable, __file__, "--serve-proxy", str(upstream_port), str(rtt_ms)],
                                     cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        self.port = int(self.proc.stdout.readline())

    def stop(self) -> None:
        self.proc.stdin.close()
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.proc.stdout.close()


def with_port(url: str, port: int) -> str:
    parts = urlsplit(url)
    return parts._replace(netloc=f"{parts.netloc.rsplit(':', 1)[0]}:{port}").geturl()


# -- the run -------------------------------------------------------------------------------------

def check_log() -> tuple[bool, str]:
    """The log the run produced: verified (chain, tree, checkpoints, pending entries), every entry
    placed once, no gap."""
    from django.db import connection

    from audit import log as audit
    from audit import sequencing

    sequencing.sign_tree_head()  # a checkpoint over everything, so the verifier checks a signed root too
    report = audit.verify_database()
    with connection.cursor() as cursor:
        cursor.execute("SELECT (SELECT count(*) FROM audit_entry), count(*), count(DISTINCT entry_id), "
                       "coalesce(max(seq), 0) FROM governance_auditevent")
        entries, events, placed, head = cursor.fetchone()
    ok = report.ok and entries == events == placed == head
    return ok, (f"log: {report.summary().splitlines()[0]}; {entries:,} entries, {events:,} events "
                f"({placed:,} distinct entries), head #{head:,}, gaps {head - events}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=float(os.environ.get("BENCH_SECONDS", "4")),
                        help="per variant and writer count (default 4)")
    parser.add_argument("--rounds", type=int, default=int(os.environ.get("BENCH_ROUNDS", "4")),
                        help="alternating slices per measurement (default 4)")
    parser.add_argument("--writers", default=os.environ.get("BENCH_WRITERS", "1,4,16"),
                        help="writer counts, comma-separated (default 1,4,16)")
    parser.add_argument("--proxy-writers", type=int, default=4, help="writers through the proxy and in inline mode")
    parser.add_argument("--rtt-ms", type=float, default=1.0, help="round trip the proxy adds (default 1)")
    parser.add_argument("--quick", action="store_true", help="a sanity run: 0.6 s per variant, 2 rounds")
    args = parser.parse_args()
    if args.quick:
        args.seconds, args.rounds = 0.6, 2
    writer_counts = [int(n) for n in args.writers.split(",")]
    inline_writers = args.proxy_writers

    os.environ["AUDIT_SEQUENCER"] = "background"
    with scratch_database("ringfence_bench_append") as url:
        from django.db import connection, connections

        with connection.cursor() as cursor:
            cursor.execute("CREATE TABLE bench_raw_entry (LIKE audit_entry INCLUDING ALL)")
        direct_url = url.replace("postgres://", "postgresql://", 1)
        settings_dict = connections["default"].settings_dict
        log(f"audit append: {args.seconds:g} s per variant and writer count in {args.rounds} alternating slices; "
            f"PostgreSQL at {url.rsplit('@', 1)[-1]}; {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}")
        results: dict[int, tuple[Variant, Variant]] = {}
        inline_direct = None
        with sequencer_process():
            log("background mode, a `manage.py audit_sequencer` process placing the entries")
            log(f"{'writers':>7} | {'raw INSERT /s':>13} {'p50 ms':>7} {'p99 ms':>7} | {'record() /s':>11} "
                f"{'p50 ms':>7} {'p99 ms':>7} | {'ratio':>5} | sequencing lag p50 / p99")
            for writers in writer_counts:
                raw, rec = raw_variant("raw INSERT", direct_url), record_variant("record(), background", "background")
                variants = [raw, rec]
                if writers == inline_writers:
                    inline_direct = record_variant("record(), inline (old)", "inline")
                    variants.append(inline_direct)
                compare(writers, variants, args.seconds, args.rounds)
                results[writers] = (raw, rec)
                log(f"{writers:>7} | {raw.rate:>13,.0f} {raw.ms(50):>7.2f} {raw.ms(99):>7.2f} | {rec.rate:>11,.0f} "
                    f"{rec.ms(50):>7.2f} {rec.ms(99):>7.2f} | {rec.rate / raw.rate:>5.0%} | {lag_text(rec)}")
                if writers == inline_writers:
                    inline = inline_direct
                    log(f"{'':>7}   inline mode, same slices: {inline.rate:,.0f} /s, p50 {inline.ms(50):.2f} ms, "
                        f"p99 {inline.ms(99):.2f} ms = {inline.rate / raw.rate:.0%} of raw; "
                        f"background is {rec.rate / inline.rate:.1f}× inline")

        proxy = LatencyProxy(int(settings_dict.get("PORT") or 5432), args.rtt_ms)
        try:
            proxied_env = {**os.environ, "DATABASE_URL": with_port(url, proxy.port)}
            saved_port = settings_dict.get("PORT")
            settings_dict["PORT"] = str(proxy.port)  # writer threads open their connections through the proxy
            try:
                with sequencer_process(proxied_env):
                    p_raw = raw_variant("raw INSERT", with_port(direct_url, proxy.port))
                    p_rec = record_variant("record(), background", "background")
                    p_inline = record_variant("record(), inline (old)", "inline")
                    compare(inline_writers, [p_raw, p_rec, p_inline], args.seconds, args.rounds)
            finally:
                settings_dict["PORT"] = saved_port
                connections.close_all()
        finally:
            proxy.stop()
        log(f"\nthrough the FLT-03 latency proxy, +{args.rtt_ms:g} ms RTT, {inline_writers} writers "
            "(the sequencer through it too)")
        log(line(p_raw))
        log(line(p_rec, p_raw) + f"  sequencing lag p50 / p99 {lag_text(p_rec)}")
        log(line(p_inline, p_raw))
        multiple = p_rec.rate / OLD_CEILING
        goal = GOALS["proxy_multiple"]
        log(f"  record() background = {multiple:.1f}× the old {OLD_CEILING:.0f}/s and "
            f"{p_rec.rate / p_inline.rate:.1f}× inline measured now (goal ≥ {goal:g}× = {OLD_CEILING * goal:,.0f}/s)")

        ok, summary = check_log()
        log("\n" + summary)
        worst = min(rec.rate / raw.rate for raw, rec in results.values())
        lag99 = max(percentile(v.lags, 99) for v in [*(rec for _, rec in results.values()), p_rec])
        for verdict, met in (
            (f"lowest ratio record()/raw INSERT {worst:.0%} (goal ≥ {GOALS['ratio']:.0%})", worst >= GOALS["ratio"]),
            (f"through the proxy {multiple:.1f}× the old ceiling (goal ≥ {GOALS['proxy_multiple']:g}×)",
             multiple >= GOALS["proxy_multiple"]),
            (f"worst sequencing lag p99 {lag99 * 1000:.0f} ms (goal ≤ {GOALS['lag_s'] * 1000:.0f} ms)",
             lag99 <= GOALS["lag_s"]),
        ):
            log(f"{'meets' if met else 'MISSES'}: {verdict}")
        connections.close_all()
        return 0 if ok else 1


if __name__ == "__main__":
    if sys.argv[1:2] == ["--serve-proxy"]:
        serve_proxy(int(sys.argv[2]), float(sys.argv[3]))
    else:
        sys.exit(main())
