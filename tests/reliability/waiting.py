"""Bounded waiting: every loop in the fault harness has a deadline and a name for its failure.

`wait_until` is the one tests/support/celery_processes.py defines for real-worker tests.
"""

from __future__ import annotations

import math
import socket
from collections.abc import Sequence

from tests.support.celery_processes import wait_until

__all__ = ["free_port", "percentile", "wait_until"]


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def percentile(values: Sequence[float], pct: float) -> float:
    """Nearest-rank percentile; 0 for no values."""
    if not values:
        return 0.0
    ordered = sorted(values)
    rank = max(1, math.ceil(pct / 100 * len(ordered)))
    return ordered[rank - 1]
