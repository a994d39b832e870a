"""The metrics Ringfence's processes count as they work (prometheus-client).

Counted in the process: request durations by route (the agents' dispatch among them) and dispatch
decisions by workflow, outcome and rule. Everything that is state (queue depth, SLA breaches, timer
lag, executor attempts, audit sequencing) is read from the database when `/metrics` is scraped
(config.observability), so it is right whichever process or host did the work.

With several web processes (gunicorn), set PROMETHEUS_MULTIPROC_DIR to a directory the processes
share, emptied at each start (the web unit does both): each process writes its counts there and
`/metrics` adds them up (prometheus-client's multiprocess mode).
"""

from __future__ import annotations

from prometheus_client import Counter, Histogram

REQUEST_SECONDS = Histogram(
    "ringfence_http_request_duration_seconds", "Time to answer a request, by route and status class.",
    ["method", "route", "status"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30))
DISPATCH_SECONDS = Histogram(
    "ringfence_dispatch_duration_seconds", "Time dispatch takes to decide and record its answer, by outcome.",
    ["outcome"], buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5))
DECISIONS = Counter(
    "ringfence_dispatch_decisions", "Dispatch answers by workflow, outcome, code (allowed_by_rule, tier, paused …) "
    "and the id of the rule that decided (empty when none did).", ["workflow", "outcome", "code", "rule"])


def observe_request(method: str, route: str, status: int, seconds: float) -> None:
    REQUEST_SECONDS.labels(method, route or "unmatched", f"{status // 100}xx").observe(seconds)


def observe_dispatch(workflow: str, outcome: str, code: str, rule: str, seconds: float) -> None:
    DISPATCH_SECONDS.labels(outcome).observe(seconds)
    DECISIONS.labels(workflow, outcome, code, rule).inc()
