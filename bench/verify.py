#!/usr/bin/env python3
"""Verification benchmark: events/s of the audit verifier over 1,000,000 events, beside bare SHA-256
over the same bytes (prev_hash ‖ canonical JSON, one digest per event) in the same run.

    .venv/bin/python bench/verify.py            # BENCH_EVENTS=200000 for a quicker look

Measures the standalone script on a JSON Lines export (what an auditor runs on another machine) and
the database chain (what the auditors' "verify" page runs: one streamed pass, PostgreSQL checking
links and columns while Python hashes; its ceiling is PostgreSQL parsing each event's contents as
jsonb to compare them with the columns, about 6 µs an event). Works in its own scratch database
(ringfence_bench_verify), created, migrated and dropped here. Target: at least 50 % of bare SHA-256.

A second reference, "SHA-256 per line as read from the file", hashes each line of the export as it
is read in megabyte chunks and nothing else: the floor for any verifier that reads the file in
Python, one interpreter loop step per event.
"""

from __future__ import annotations

import hashlib
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from export import EVENTS, ROUNDS, load_chain, log, scratch_database  # noqa: E402


def main() -> int:
    with scratch_database("ringfence_bench_verify"):
        from django.conf import settings

        from governance import audit, auditing
        from governance.models import AuditEvent
        from governance.verify_audit import verify_export

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
                     AuditEvent.objects.order_by("seq").values_list("prev_hash", "canonical").iterator(chunk_size=20_000)]
            sha256 = hashlib.sha256

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

            timings = {}
            for _ in range(ROUNDS):  # interleaved, best of each: load on the machine affects all alike
                for name, run in (("bare SHA-256", bare), ("SHA-256 per line as read from the file", per_line),
                                  ("standalone script on the export", lambda: verify_export(str(path), settings.AUDIT_CHECKPOINT_KEY)),
                                  ("database chain (verify page)", audit.verify_database)):
                    started = time.perf_counter()
                    result = run()
                    seconds = time.perf_counter() - started
                    if not name.startswith(("bare", "SHA-256")):
                        assert result.ok and result.events == EVENTS, result.summary()
                    timings[name] = min(timings.get(name, float("inf")), seconds)
        base = EVENTS / timings["bare SHA-256"]
        log(f"\nbest of {ROUNDS} rounds each, {EVENTS:,} events")
        ok = True
        for name, seconds in timings.items():
            rate = EVENTS / seconds
            share = rate / base * 100
            verifier = not name.startswith(("bare", "SHA-256"))
            if verifier:
                ok &= share >= 50
            log(f"{name:40} {rate:>12,.0f} events/s ({seconds:.2f} s) = {share:.0f} % of bare SHA-256"
                + (" (target ≥ 50 %)" if verifier else ""))
        log("\nresult: " + ("target met" if ok else "target missed"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
