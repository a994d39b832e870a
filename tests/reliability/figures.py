"""The figures each fault test reports (RELIABILITY.md §3 names one per test).

A test calls `figures.report("FLT-04", "time to error 0.52 s", lock_timeout_s=0.5, ...)`; the
line is printed at once (visible with -s) and again in a "Ringfence reliability figures" section
at the end of the run. With RINGFENCE_FIGURES_FILE set, the figures are also written there as
JSON lines, e.g. to refresh the README table.
"""

from __future__ import annotations

import json
import os
import time


class Figures:
    def __init__(self) -> None:
        self.lines: list[tuple[str, str]] = []

    def report(self, test_id: str, summary: str, **values: object) -> None:
        self.lines.append((test_id, summary))
        print(f"[{test_id}] {summary}", flush=True)
        path = os.environ.get("RINGFENCE_FIGURES_FILE")
        if path:
            with open(path, "a", encoding="utf-8") as fh:
                fh.write(json.dumps({"id": test_id, "summary": summary, "values": values, "at": time.time()},
                                    default=str) + "\n")
