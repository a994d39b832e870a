#!/usr/bin/env python3
"""Verification benchmark: events/s of the audit verifier over 1,000,000 events, beside bare SHA-256
over the same bytes (prev_hash ‖ canonical JSON, one digest per event) in the same run.

    .venv/bin/python bench/verify.py            # BENCH_EVENTS=200000 for a quicker look

Measures the standalone script on a JSON Lines export (what an auditor runs on another machine: by
default one process per core, each checking a stretch of the file; also shown in one process) and
the database chain (what the auditors' "verify" page runs: one streamed pass, PostgreSQL checking
links and columns while Python hashes; PostgreSQL's checks, each event's contents parsed as jsonb
and compared with its columns, cost about 6 µs an event). Works in its own scratch database
(ringfence_bench_verify), created, migrated and dropped here. Target: at least 50 % of bare SHA-256.

More references: "SHA-256 per line as read from the file" hashes each line of the export as it is
read in megabyte chunks and nothing else, the floor for any verifier that reads the file in Python
one event at a time; "bare SHA-256 in N processes" is the machine's hashing limit when every core
hashes its share, against which the script's N processes are also compared; "database rows alone"
streams the four hashed columns out of PostgreSQL and checks nothing, the floor under the page.
"""

from __future__ import annotations

import hashlib
import multiprocessing
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from export import EVENTS, ROUNDS, load_chain, log, scratch_database  # noqa: E402

SCRIPT = Path(__file__).resolve().parent.parent / "audit" / "verify_audit.py"
PAIRS: list[tuple[bytes, bytes]] = []  # (prev_hash bytes, canonical bytes): set before the pool forks


def _hash_share(start: int, stop: int) -> int:
    sha256 = hashlib.sha256
    for prev, canonical in PAIRS[start:stop]:
        sha256(prev + canonical).hexdigest()
    return stop - start


def main() -> int:
    with scratch_database("ringfence_bench_verify"):
        from django.conf import settings
        from django.db import connection, transaction

        from audit import log as audit
        from audit import views as auditing
        from audit.models import AuditEvent
        from audit.verify_audit import Report, default_workers

        log(f"generating and loading {EVENTS:,} chained events …")
        log(f"  loaded in {load_chain(EVENTS):.1f} s")
        cp = audit.write_checkpoint("export")
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "export.jsonl"
            with open(path, "w", encoding="utf-8") as fh:
                for chunk in auditing.export_stream(AuditEvent.objects.all(), "jsonl", cp):
                    fh.write(chunk)
            log(f"  export: {path.stat().st_size / 1e6:,.0f} MB")

            # The bytes every verifier must hash, held in memory so the baseline is hashing only.
            pairs = [(bytes.fromhex(prev), canonical.encode("utf-8")) for prev, canonical in
                     AuditEvent.objects.order_by("seq").values_list("prev_hash", "canonical")
                     .iterator(chunk_size=20_000)]
            PAIRS[:] = pairs
            sha256, workers = hashlib.sha256, default_workers()
            shares = [(len(pairs) * i // workers, len(pairs) * (i + 1) // workers) for i in range(workers)]
            pool = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("fork"))
            list(pool.map(_hash_share, [0] * workers, [1] * workers))  # forked, holding PAIRS, before it is timed

            def bare_parallel() -> int:
                return sum(pool.map(_hash_share, *zip(*shares, strict=True)))

            def script(*options: str) -> Callable[[], Report]:
                """The script as an auditor runs it: its own process, the export and the key file."""
                def run() -> Report:
                    done = subprocess.run([sys.executable, str(SCRIPT), str(path), "--key-file", str(key_file),
                                           *options], capture_output=True, text=True, check=False)
                    return (Report(events=int(done.stdout.split()[1])) if done.returncode == 0
                            else Report(problems=[done.stdout + done.stderr]))
                return run

            def rows_alone() -> int:
                """The four hashed columns streamed out of PostgreSQL in seq order, nothing checked:
                the floor under any verifier that reads the chain from the database."""
                count = 0
                with transaction.atomic(), connection.connection.cursor() as cursor:
                    for _ in cursor.stream("SELECT seq, prev_hash, hash, canonical FROM governance_auditevent "
                                           "ORDER BY seq", size=audit.FAST_VERIFY_CHUNK):
                        count += 1
                return count

            def bare() -> int:
                for prev, canonical in pairs:
                    sha256(prev + canonical).hexdigest()
                return len(pairs)

            def per_line() -> int:
                with open(path, "rb") as fh:
                    while chunk := fh.readlines(1 << 20):
                        for line in chunk:
                            sha256(line).hexdigest()
                return len(pairs)

            key_file = Path(tmp) / "checkpoint.key"
            key_file.write_text(settings.AUDIT_CHECKPOINT_KEY)
            timings = {}
            for _ in range(ROUNDS):  # interleaved, best of each: load on the machine affects all alike
                for name, run in (("bare SHA-256", bare), (f"bare SHA-256 in {workers} processes", bare_parallel),
                                  ("SHA-256 per line as read from the file", per_line),
                                  (f"standalone script, {workers} processes (default)", script()),
                                  ("standalone script, 1 process", script("--workers", "1")),
                                  ("database rows alone, streamed unchecked", rows_alone),
                                  ("database chain (verify page)", audit.verify_database)):
                    started = time.perf_counter()
                    result = run()
                    seconds = time.perf_counter() - started
                    if not name.startswith(("bare", "SHA-256", "database rows")):
                        assert result.ok and result.events == EVENTS, result.summary()
                    timings[name] = min(timings.get(name, float("inf")), seconds)
            pool.shutdown()
        base = EVENTS / timings["bare SHA-256"]
        machine = EVENTS / timings[f"bare SHA-256 in {workers} processes"]
        log(f"\nbest of {ROUNDS} rounds each, {EVENTS:,} events, {workers} cores")
        for name, seconds in timings.items():
            rate = EVENTS / seconds
            log(f"{name:44} {rate:>12,.0f} events/s ({seconds:.2f} s) = {rate / base * 100:3.0f} % of bare SHA-256, "
                f"{rate / machine * 100:3.0f} % of it in {workers} processes")
        share = EVENTS / timings[f"standalone script, {workers} processes (default)"] / base * 100
        log(f"\nthe verifier an auditor runs on an export: {share:.0f} % of bare SHA-256 (target ≥ 50 %): "
            + ("target met" if share >= 50 else "target missed"))
        rows = EVENTS / timings["database rows alone, streamed unchecked"] / base * 100
        log(f"the verify page's database pass ({EVENTS / timings['database chain (verify page)'] / base * 100:.0f} %) "
            "also checks every column against the hashed contents; streaming the rows out of PostgreSQL alone is "
            f"{rows:.0f} %")
    return 0


if __name__ == "__main__":
    sys.exit(main())
