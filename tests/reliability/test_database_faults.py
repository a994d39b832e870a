"""Faults of the database under the core's services and pages: a hung server (FLT-02), network
latency (FLT-03) and a held row lock (FLT-04)."""

from __future__ import annotations

import statistics
import sys
import threading
import time
from collections import Counter

import pytest
from django.db import OperationalError, connection, connections, transaction

from approvals.models import Decision
from audit import log as audit
from audit.models import AuditEvent
from governance import services
from governance.models import Workflow
from tests.reliability.agents import ALLOWED, GATED, api_token, decide, decision_of, dispatch
from tests.reliability.threads import database_settings, in_thread, session_options
from tests.reliability.waiting import percentile, wait_until
from tests.reliability.web import session_headers

pytestmark = [pytest.mark.reliability, pytest.mark.timeout(180)]


# -- FLT-04 ------------------------------------------------------------------------------------
LOCK_TIMEOUT_MS = 500


def test_flt04_held_row_lock_turns_into_an_error_after_lock_timeout(private_pg, figures, workflow,
                                                                     containment_owner):
    """Another transaction holds the workflow row; the kill switch fails after lock_timeout, not later."""
    with private_pg.admin(private_pg.dbname, autocommit=False) as holder:
        holder.execute("SELECT id FROM governance_workflow WHERE id = %s FOR UPDATE", [workflow.pk])
        with database_settings(OPTIONS=session_options(lock_timeout_ms=LOCK_TIMEOUT_MS)):
            started = time.monotonic()
            thread, outcome = in_thread(
                lambda: services.pause_workflow(workflow.pk, actor=containment_owner, reason="incident 42"))
            thread.join(LOCK_TIMEOUT_MS / 1000 + 10)
            elapsed = time.monotonic() - started
        holder.rollback()
    assert not thread.is_alive(), "the transition hung behind the lock"
    assert isinstance(outcome.error, OperationalError), outcome.error
    cause = type(outcome.error.__cause__).__name__
    figures.report("FLT-04", f"time to error {elapsed * 1000:.0f} ms vs lock_timeout {LOCK_TIMEOUT_MS} ms ({cause})",
                   elapsed_ms=round(elapsed * 1000), lock_timeout_ms=LOCK_TIMEOUT_MS)
    assert cause == "LockNotAvailable"
    assert LOCK_TIMEOUT_MS / 1000 <= elapsed < LOCK_TIMEOUT_MS / 1000 + 2
    assert not Workflow.objects.get(pk=workflow.pk).paused
    assert not AuditEvent.objects.filter(action="workflow.paused").exists()
    # Once the lock is gone the same call succeeds.
    services.pause_workflow(workflow.pk, actor=containment_owner, reason="incident 42")
    assert Workflow.objects.get(pk=workflow.pk).paused


# -- FLT-02 ------------------------------------------------------------------------------------
CONNECT_TIMEOUT_S = 2
FREEZE_S = 6  # RELIABILITY.md says 15 s; 6 s gives each client several timed-out requests


def test_flt02_hung_database_fails_requests_within_connect_timeout(services, private_pg, figures, workflow,
                                                                  containment_owner):
    web = services.web(DATABASE_CONNECT_TIMEOUT=CONNECT_TIMEOUT_S)
    headers = session_headers(containment_owner)
    path = "/workflows/"
    assert web.request("GET", path, headers=headers).status == 200

    stop = threading.Event()
    during: list[tuple[int, float]] = []

    def client() -> None:
        for _ in range(100):  # bounded; ends with the freeze
            if stop.is_set():
                return
            try:
                response = web.request("GET", path, headers=headers, timeout=30)
                during.append((response.status, response.seconds))
            except OSError:
                during.append((0, 30.0))

    processes = private_pg.freeze()
    clients = [threading.Thread(target=client, daemon=True) for _ in range(2)]
    for thread in clients:
        thread.start()
    time.sleep(FREEZE_S)  # the outage itself: its length is the test's input, not a hope
    stop.set()
    for thread in clients:
        thread.join(CONNECT_TIMEOUT_S + 30)
    thawed = time.monotonic()
    private_pg.thaw()
    recovered = wait_until(lambda: web.request("GET", path, headers=headers).status == 200 and time.monotonic(),
                           30, "the page works again after SIGCONT")

    latencies = [seconds for _, seconds in during]
    statuses = sorted({status for status, _ in during})
    p99 = percentile(latencies, 99)
    figures.report("FLT-02", f"PostgreSQL SIGSTOPped {FREEZE_S} s ({processes} processes; RELIABILITY.md: 15 s): "
                             f"{len(during)} requests, statuses {statuses}, p50 {statistics.median(latencies):.2f} s, "
                             f"p99 {p99:.2f} s vs connect_timeout {CONNECT_TIMEOUT_S} s; "
                             f"first success {recovered - thawed:.2f} s after SIGCONT",
                   requests=len(during), p99_s=round(p99, 2), connect_timeout_s=CONNECT_TIMEOUT_S)
    assert len(during) >= 4
    assert all(status == 503 for status, _ in during), during  # the page that says the database is away
    assert p99 <= CONNECT_TIMEOUT_S + 1.5
    assert recovered - thawed < 10


# -- FLT-03 ------------------------------------------------------------------------------------
RTTS_MS = (0, 1, 5)
RUN_S = 1.5


def _append_for(seconds: float, writer: int, barrier: threading.Barrier, results: list) -> None:
    latencies, errors = [], 0
    barrier.wait(10)
    deadline = time.monotonic() + seconds
    for n in range(100_000):  # bounded in count and in time
        if time.monotonic() >= deadline:
            break
        started = time.monotonic()
        try:
            with transaction.atomic():
                audit.record("system:reliability", "reliability.append", ("reliability.writer", f"{writer}-{n}"))
        except Exception:  # noqa: BLE001 - counted; the assertion is that there are none
            errors += 1
        latencies.append(time.monotonic() - started)
    results.append((latencies, errors))


def _measure(writers: int) -> tuple[float, float, int, int]:
    """appends/s, p99 ms, errors and appended events of `writers` threads appending for RUN_S."""
    results: list = []
    barrier = threading.Barrier(writers)
    threads = [in_thread(lambda w=w: _append_for(RUN_S, w, barrier, results))[0] for w in range(writers)]
    for thread in threads:
        thread.join(RUN_S + 30)
    latencies = [lat for lats, _ in results for lat in lats]
    errors = sum(err for _, err in results)
    return len(latencies) / RUN_S, percentile(latencies, 99) * 1000, errors, len(latencies) - errors


def test_flt03_database_latency_degrades_the_audit_append_ceiling_without_errors(private_pg, tcp_proxy, figures):
    proxy = tcp_proxy(private_pg.port)
    rows, appended = [], 0
    # The proxy shares the interpreter with the writers: switch threads often enough that it is
    # not the GIL that adds the latency.
    switch_interval = sys.getswitchinterval()
    sys.setswitchinterval(0.0002)
    try:
        for label, rtt in (("direct", None), *((f"+{ms} ms RTT", ms) for ms in RTTS_MS)):
            for writers in (1, 4):
                if rtt is None:
                    rate, p99, errors, count = _measure(writers)
                else:
                    proxy.delay_ms = rtt
                    with database_settings(PORT=str(proxy.port)):
                        rate, p99, errors, count = _measure(writers)
                rows.append((label, rtt, writers, rate, p99, errors))
                appended += count
    finally:
        sys.setswitchinterval(switch_interval)
    for label, rtt, writers, rate, p99, errors in rows:
        figures.report("FLT-03", f"{label:>11}, {writers} writer{'s' if writers > 1 else ' '}: "
                                 f"{rate:5,.0f} appends/s, p99 {p99:6.1f} ms, errors {errors}",
                       rtt_ms=rtt, writers=writers, appends_per_s=round(rate), p99_ms=round(p99, 1), errors=errors)
    assert all(errors == 0 for *_, errors in rows)
    by = {(rtt, writers): rate for _, rtt, writers, rate, _, _ in rows}
    assert by[(5, 1)] < by[(1, 1)] < by[(0, 1)], "the ceiling falls as round trips get longer"
    assert audit.verify_database().ok
    assert AuditEvent.objects.filter(action="reliability.append").count() == appended


# -- FLT-01 ------------------------------------------------------------------------------------
LOAD_S, STOP_AT_S, DOWN_S = 22, 5, 8  # RELIABILITY.md: 60 s of load, stop at 20 s, start at 30 s
AGENTS = 3


def test_flt01_database_stopped_under_load_fails_closed_and_recovers_without_restart(
        services, private_pg, figures, admin_user, workflow, agent, approver):
    token = api_token(admin_user, workflow, agent)
    web = services.web(workers=3, API_RATE_LIMIT_REQUESTS=1_000_000)
    browser = session_headers(approver)
    records: list[dict] = []
    pending: list[int] = []
    end = time.monotonic() + LOAD_S

    def agent_loop(n: int) -> None:
        for i in range(100_000):  # bounded in count and by `end`
            if time.monotonic() >= end:
                return
            started = time.time()
            try:
                key, response = dispatch(web, token, workflow, GATED if (i + n) % 2 else ALLOWED)
            except OSError as exc:
                records.append({"kind": "api", "t0": started, "t1": time.time(), "status": 0, "error": repr(exc)})
                continue
            answer = decision_of(response)
            if answer == "pending":
                pending.append(response.json()["approval_id"])
            records.append({"kind": "api", "t0": started, "t1": time.time(), "status": response.status,
                            "type": response.content_type, "decision": answer, "key": key})

    def approver_loop() -> None:
        for _ in range(100_000):
            if time.monotonic() >= end:
                return
            if not pending:
                time.sleep(0.05)
                continue
            started = time.time()
            try:
                response = decide(web, browser, pending.pop(0))
                records.append({"kind": "web", "t0": started, "t1": time.time(), "status": response.status})
            except OSError as exc:
                records.append({"kind": "web", "t0": started, "t1": time.time(), "status": 0, "error": repr(exc)})

    threads = [threading.Thread(target=agent_loop, args=(n,), daemon=True) for n in range(AGENTS)]
    threads.append(threading.Thread(target=approver_loop, daemon=True))
    for thread in threads:
        thread.start()
    time.sleep(STOP_AT_S)  # load before the fault
    private_pg.stop("immediate")
    stopped = time.time()
    time.sleep(DOWN_S)  # the outage's length is the test's input
    private_pg.start()
    restarted = time.time()
    for thread in threads:
        thread.join(LOAD_S + 60)
    connections.close_all()  # the test's own connection died with the server
    recovered = wait_until(lambda: decision_of(dispatch(web, token, workflow, ALLOWED)[1]) == "allow" and time.time(),
                           30, "dispatch answers again")
    with connection.cursor() as cursor:  # pg_ctl start returns up to its poll interval after the server is up
        cursor.execute("SELECT extract(epoch FROM pg_postmaster_start_time())")
        up_since = float(cursor.fetchone()[0])

    api = [r for r in records if r["kind"] == "api"]
    outage = [r for r in api if r["t0"] >= stopped and r["t1"] <= up_since]
    after = Counter(r["status"] for r in api if r["t0"] >= restarted)
    recovered = min([r["t1"] for r in api if r["t0"] >= restarted and r["status"] == 200] + [recovered])
    other_5xx = [r for r in api if r["status"] >= 500 and r["status"] != 503 or r["status"] == 0]
    allowed_keys = {r["key"] for r in api if r.get("decision") == "allow"}
    committed_allows = set(AuditEvent.objects.filter(action="dispatch.allowed")
                           .values_list("data__idempotency_key", flat=True))
    web_statuses = Counter(r["status"] for r in records if r["kind"] == "web")
    decided = AuditEvent.objects.filter(action="approval.decided").count()
    report = audit.verify_database()
    figures.report("FLT-01", f"{len(records)} requests in {LOAD_S} s ({len(records) / LOAD_S:.0f}/s; RELIABILITY.md: "
                             f"50/s for 60 s), PostgreSQL stopped (immediate) {DOWN_S} s: API during the outage "
                             f"{dict(Counter(r['status'] for r in outage))}, allow while down "
                             f"{sum(r.get('decision') == 'allow' for r in outage)}, non-503 5xx {len(other_5xx)}; "
                             f"after start {dict(after)}, first success {recovered - restarted:.2f} s after start "
                             "without restarting the web server; "
                             f"web decisions {dict(web_statuses)}; chain {'OK' if report.ok else 'BROKEN'}",
                   requests=len(records), outage=len(outage), non_503_5xx=len(other_5xx),
                   first_success_s=round(recovered - restarted, 2))
    assert outage and all(r["status"] == 503 and r["type"] == "application/problem+json" for r in outage), outage[:5]
    assert not other_5xx, other_5xx[:5]
    assert set(web_statuses) <= {302, 503}, web_statuses  # a decision page never answers a bare 500
    assert allowed_keys <= committed_allows, "an allow was answered that the database never committed"
    assert recovered - restarted < 10
    assert web.process.alive() and web.process.starts == 1
    assert report.ok, report
    assert Decision.objects.count() == decided, "every decision row has its audit event and vice versa"
