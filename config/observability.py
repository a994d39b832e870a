"""What an operator watches: `/metrics` (Prometheus), `/healthz` (the process answers) and `/readyz`
(its database, broker and cache answer in time).

`/metrics` adds to the processes' own counts (core.metrics; summed over every web process in
multiprocess mode) what is read from the database at each scrape: approval requests pending by
workflow and level, those past their SLA deadline, the timer lag, executor attempts by outcome,
audit entries waiting for the sequencer and the oldest one's age, the newest pull of each live plan's
metric from its provider (failures in a row, duration), and the Celery queue's length.
It answers only a caller with METRICS_TOKEN as bearer token, or, without a token configured, a
caller inside METRICS_ALLOWED_NETWORKS (loopback by default). Health answers need no login and say
nothing but which dependency failed.

`OperabilityMiddleware` answers the three paths ahead of the rest of the stack: no host check, no
HTTPS redirect, no session, so a supervisor or Prometheus on the host reaches them at
http://127.0.0.1:8000/ whatever ALLOWED_HOSTS and HTTPS say.
"""

from __future__ import annotations

import hmac
import ipaddress
import os
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout

from django.conf import settings
from django.core.cache import cache
from django.db import connection
from django.db.models import Count, Max, Min, Subquery
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import REGISTRY, Collector

from approvals.models import ApprovalRequest
from audit import sequencing
from core import clock
from rollouts.models import ActionAttempt, FetchStatus, MetricFetch, RolloutPlan


class StateCollector(Collector):
    """Gauges and counters read from the database at scrape time."""

    def collect(self) -> Iterator:
        now = clock.now()
        pending = ApprovalRequest.objects.filter(state=ApprovalRequest.State.PENDING)
        depth = GaugeMetricFamily("ringfence_approvals_pending", "Approval requests waiting for a decision.",
                                  labels=["workflow", "level"])
        breached = GaugeMetricFamily("ringfence_approvals_sla_breached",
                                     "Pending approval requests past their SLA deadline.", labels=["workflow"])
        for row in pending.values("workflow__slug", "level").annotate(n=Count("id")).order_by():
            depth.add_metric([row["workflow__slug"], str(row["level"])], row["n"])
        overdue = pending.filter(due_at__lt=now, held_at__isnull=True)
        for row in overdue.values("workflow__slug").annotate(n=Count("id")).order_by():
            breached.add_metric([row["workflow__slug"]], row["n"])
        yield depth
        yield breached
        oldest = overdue.aggregate(oldest=Min("due_at"))["oldest"]
        yield GaugeMetricFamily("ringfence_timer_lag_seconds",
                                "How long the most overdue approval timer has been due without firing.",
                                value=max(0.0, (now - oldest).total_seconds()) if oldest else 0.0)
        attempts = CounterMetricFamily("ringfence_executor_attempts", "Rollout executor attempts by outcome.",
                                       labels=["outcome"])
        for row in ActionAttempt.objects.values("outcome").annotate(n=Count("id")).order_by():
            attempts.add_metric([row["outcome"]], row["n"])
        yield attempts
        yield from _metric_fetches()
        count, age = sequencing.backlog()
        yield GaugeMetricFamily("ringfence_audit_unsequenced_entries",
                                "Audit entries accepted and not yet placed in the log by the sequencer.", value=count)
        yield GaugeMetricFamily("ringfence_audit_sequencing_lag_seconds",
                                "Age of the oldest audit entry waiting for the sequencer (0 when none).",
                                value=age or 0.0)
        length = _celery_queue_length()
        if length is not None:
            queue = GaugeMetricFamily("ringfence_celery_queue_length", "Messages waiting in the Celery queue.",
                                      labels=["queue"])
            queue.add_metric(["celery"], length)
            yield queue


def _metric_fetches() -> Iterator[GaugeMetricFamily]:
    """The newest finished pull of each metric of each live plan (labelled with that pull's segment, so a
    segment of an earlier ring stops reporting): failed ones in a row (0 after a success) and the pull's
    duration; old fetch rows are pruned, so these are gauges, not counters. One statement."""
    finished = (MetricFetch.objects.filter(plan__state__in=RolloutPlan.LIVE_STATES)
                .exclude(status=FetchStatus.RUNNING))
    newest = finished.values("plan_id", "metric_id").annotate(newest=Max("pk")).values("newest").order_by()
    failing = GaugeMetricFamily("ringfence_metric_fetch_failures",
                                "Failed pulls in a row of a live plan's metric from its provider (0 after a success).",
                                labels=["workflow", "plan", "metric", "segment", "status"])
    duration = GaugeMetricFamily("ringfence_metric_fetch_duration_seconds",
                                 "How long the newest pull of a live plan's metric took.",
                                 labels=["workflow", "plan", "metric", "segment"])
    rows = (MetricFetch.objects.filter(pk__in=Subquery(newest))
            .values_list("plan__workflow__slug", "plan_id", "metric__slug", "segment", "status", "failures",
                         "duration_ms").order_by("plan_id", "metric__slug"))
    for workflow, plan, metric, segment, status, failures, duration_ms in rows:
        failing.add_metric([workflow, str(plan), metric, segment, status], failures)
        duration.add_metric([workflow, str(plan), metric, segment], duration_ms / 1000)
    yield failing
    yield duration


def _broker_client():
    """A Redis client on the broker that gives up after READY_TIMEOUT_SECONDS; None when the broker
    is not Redis (the zero-setup filesystem broker)."""
    if not settings.CELERY_BROKER_URL.startswith(("redis://", "rediss://")):
        return None
    import redis

    return redis.Redis.from_url(settings.CELERY_BROKER_URL, socket_timeout=settings.READY_TIMEOUT_SECONDS,
                                socket_connect_timeout=settings.READY_TIMEOUT_SECONDS)


def _celery_queue_length() -> int | None:
    """LLEN of the default queue when the broker is Redis (None otherwise or when it does not answer)."""
    client = _broker_client()
    if client is None:
        return None
    try:
        return int(client.llen("celery"))
    except Exception:  # noqa: BLE001 - a scrape shows what it can
        return None
    finally:
        client.close()


def _registry() -> CollectorRegistry:
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess

        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
    else:
        registry = CollectorRegistry()
        for collector in list(REGISTRY._collector_to_names):  # the process's own counts
            registry.register(collector)
    registry.register(StateCollector())
    return registry


def _may_scrape(request: HttpRequest) -> bool:
    if settings.METRICS_TOKEN:
        given = request.headers.get("Authorization", "")
        return hmac.compare_digest(given.encode(), f"Bearer {settings.METRICS_TOKEN}".encode())
    try:
        address = ipaddress.ip_address(request.META.get("REMOTE_ADDR", ""))
    except ValueError:
        return False
    return any(address in network for network in settings.METRICS_ALLOWED_NETWORKS)


@never_cache
@require_GET
def metrics(request: HttpRequest) -> HttpResponse:
    if not _may_scrape(request):
        return HttpResponse("Metrics need METRICS_TOKEN as a bearer token, or a caller inside "
                            "METRICS_ALLOWED_NETWORKS.\n", status=403, content_type="text/plain; charset=utf-8")
    return HttpResponse(generate_latest(_registry()), content_type=CONTENT_TYPE_LATEST)


@never_cache
@require_GET
def healthz(request: HttpRequest) -> JsonResponse:
    """The process is alive and serving; it checks nothing else."""
    return JsonResponse({"status": "ok"})


def _database() -> None:
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1")


def _broker() -> None:
    client = _broker_client()
    if client is None:
        return  # the zero-setup filesystem broker: a directory, there when the process started
    try:
        client.ping()
    finally:
        client.close()


def _cache() -> None:
    key = "ringfence:readyz"
    cache.set(key, "1", timeout=30)
    if cache.get(key) != "1":
        raise RuntimeError("the cache did not keep a value")


CHECKS: dict[str, Callable[[], None]] = {"database": _database, "broker": _broker, "cache": _cache}


def _run_check(check: Callable[[], None]) -> None:
    try:
        check()
    finally:
        connection.close()  # the check's thread ends here: its connection (or pool slot) goes back


@never_cache
@require_GET
def readyz(request: HttpRequest) -> JsonResponse:
    """200 when the database, the broker and the cache each answer within READY_TIMEOUT_SECONDS;
    503 naming the ones that did not."""
    timeout = settings.READY_TIMEOUT_SECONDS
    results: dict[str, str] = {}
    pool = ThreadPoolExecutor(max_workers=len(CHECKS), thread_name_prefix="readyz")
    try:
        started = time.monotonic()
        futures = {name: pool.submit(_run_check, check) for name, check in CHECKS.items()}
        for name, future in futures.items():
            try:
                future.result(timeout=max(0.0, timeout - (time.monotonic() - started)))
                results[name] = "ok"
            except FutureTimeout:
                results[name] = f"no answer within {timeout:g} s"
            except Exception as exc:  # noqa: BLE001 - named, never raised to the caller
                results[name] = f"failed: {type(exc).__name__}"
    finally:
        pool.shutdown(wait=False, cancel_futures=True)
    failed = [name for name, result in results.items() if result != "ok"]
    return JsonResponse({"status": "unavailable" if failed else "ok", "failed": failed, "checks": results},
                        status=503 if failed else 200)


ENDPOINTS: dict[str, Callable[[HttpRequest], HttpResponse]] = {"/metrics": metrics, "/healthz": healthz,
                                                              "/readyz": readyz}


class OperabilityMiddleware:
    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        endpoint = ENDPOINTS.get(request.path_info)
        if endpoint is None:
            return self.get_response(request)
        request.route_label = request.path_info  # for the request's log line and duration metric
        return endpoint(request)
