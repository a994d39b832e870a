"""Waiting holds no worker: the approval long-poll awaits a wake-up, in a real ASGI server.

Each test starts gunicorn with uvicorn workers (the systemd unit's server) against the test
database. The safety net (a re-read every API_LONG_POLL_INTERVAL_SECONDS × 10) is set far beyond
the waits here unless a test is about it, so an answer within a second of the decision can only
be the Redis wake-up.
"""

from __future__ import annotations

import http.client
import json
import logging
import statistics
import threading
import time
import uuid
from pathlib import Path

import pytest
import redis

from approvals import services as approval_services
from approvals import waiting
from tests.support.celery_processes import wait_until
from tests.support.web_processes import asgi_server

pytestmark = pytest.mark.django_db(transaction=True)

NO_SAFETY_NET = {"API_LONG_POLL_MAX_SECONDS": 60, "API_LONG_POLL_INTERVAL_SECONDS": 30}  # re-read every 300 s


@pytest.fixture
def figures(request):
    """Print a measured figure (shown with -s, and kept in the test's report properties)."""

    def report(line: str) -> None:
        request.node.user_properties.append(("figure", line))
        print(line)

    return report


def _dispatch(server, token: str, action: str = "refund_customer") -> dict:
    body = {"workflow": "refund-agent", "action": action, "parameters": {"order": "A-1"}}
    status, body, _ = server.request("POST", "/api/v1/dispatch", token=token, body=body,
                                     headers={"Idempotency-Key": uuid.uuid4().hex})
    assert status == 200, body
    return body


class Waiter(threading.Thread):
    """GET /approvals/{id}?wait=… on a connection of its own; notes when it was sent and answered."""

    def __init__(self, port: int, token: str, approval_id: int, wait: float, sent: threading.Semaphore | None = None):
        super().__init__(daemon=True)
        self.port, self.token, self.path = port, token, f"/api/v1/approvals/{approval_id}?wait={wait:g}"
        self.sent = sent
        self.status: int | None = None
        self.body: dict | None = None
        self.answered_at: float | None = None

    def run(self) -> None:
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=120)
        try:
            connection.request("GET", self.path, headers={"Authorization": f"Bearer {self.token}"})
            if self.sent is not None:
                self.sent.release()
            response = connection.getresponse()
            self.body = json.loads(response.read())
            self.status, self.answered_at = response.status, time.monotonic()
        finally:
            connection.close()


def _subscribers() -> int:
    from django.conf import settings

    client = redis.Redis.from_url(settings.REDIS_URL)
    try:
        return dict(client.pubsub_numsub(waiting.channel())).get(waiting.channel().encode(), 0)
    finally:
        client.close()


def _threads(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Threads:"):
            return int(line.split()[1])
    return 0


def _cpu_ticks(pid: int) -> int:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])  # utime + stime


def _settle(pid: int, timeout: float = 30) -> None:
    """Until the process is idle (under 2 % of a core over 0.5 s): every waiter has been read."""
    deadline = time.monotonic() + timeout
    while True:
        ticks = _cpu_ticks(pid)
        time.sleep(0.5)
        if _cpu_ticks(pid) - ticks <= 1 or time.monotonic() > deadline:
            return


def _worker_pid(master: int) -> int:
    children = Path(f"/proc/{master}/task/{master}/children").read_text().split()
    assert len(children) == 1, children
    return int(children[0])


def test_a_waiter_answers_within_a_fraction_of_a_second_of_the_decision(agent, actions, approver, figures):
    with asgi_server(workers=1, env=NO_SAFETY_NET) as server:
        approval_id = _dispatch(server, agent.token)["approval_id"]
        waiter = Waiter(server.port, agent.token, approval_id, wait=30)
        started = time.monotonic()
        waiter.start()
        wait_until(_subscribers, 10, "the server subscribed to the wake-ups")
        time.sleep(1.0)  # the decision comes while the waiter waits, not before its first read
        approval_services.record_decision(approval_id, actor=approver, verdict="reject", justification="too much")
        decided = time.monotonic()
        waiter.join(35)

    assert waiter.status == 200 and waiter.body["state"] == "rejected" and waiter.body["outcome"] == "deny"
    assert waiter.body["decisions"][0]["justification"] == "too much"
    lag = waiter.answered_at - decided
    figures(f"long-poll wake-up: answered {lag * 1000:.0f} ms after the decision, "
            f"{waiter.answered_at - started:.2f} s into a 30 s wait (safety net 300 s)")
    assert lag < 1.0 and waiter.answered_at - started < 5


def test_a_hundred_waiters_on_one_worker_do_not_hold_up_a_dispatch(agent, actions, approver, figures):
    with asgi_server(workers=1, env=NO_SAFETY_NET) as server:
        worker = _worker_pid(server.proc.pid)
        approval_id = _dispatch(server, agent.token)["approval_id"]
        before = [_dispatch(server, agent.token, "send_receipt") for _ in range(3)]  # warm, and a baseline
        baseline = [server.request("POST", "/api/v1/dispatch", token=agent.token, headers={
            "Idempotency-Key": uuid.uuid4().hex}, body={"workflow": "refund-agent", "action": "send_receipt"})[2]
            for _ in range(10)]
        sent = threading.Semaphore(0)
        waiters = [Waiter(server.port, agent.token, approval_id, wait=30, sent=sent) for _ in range(100)]
        for w in waiters:
            w.start()
        for _ in waiters:
            assert sent.acquire(timeout=30)
        _settle(worker)  # the worker has read all 100 once: they are now waiting
        threads_waiting = _threads(worker)

        during = []
        for _ in range(10):
            status, body, seconds = server.request("POST", "/api/v1/dispatch", token=agent.token, headers={
                "Idempotency-Key": uuid.uuid4().hex}, body={"workflow": "refund-agent", "action": "send_receipt"})
            assert status == 200 and body["decision"] == "allow", body
            during.append(seconds)
        still_waiting = sum(w.answered_at is None for w in waiters)

        approval_services.record_decision(approval_id, actor=approver, verdict="approve")
        decided = time.monotonic()
        for w in waiters:
            w.join(35)

    assert all(b["decision"] == "allow" for b in before)
    assert still_waiting == 100
    answered = [w for w in waiters if w.status == 200 and w.body["state"] == "approved"]
    assert len(answered) == 100, [(w.status, w.body) for w in waiters if w not in answered][:3]
    lags = sorted(w.answered_at - decided for w in answered)
    figures(f"100 long-polls on one uvicorn worker: dispatch median {statistics.median(baseline) * 1000:.1f} ms "
            f"before, {statistics.median(during) * 1000:.1f} ms (max {max(during) * 1000:.1f} ms) while they wait; "
            f"all 100 answered within {lags[-1] * 1000:.0f} ms of the decision (median "
            f"{statistics.median(lags) * 1000:.0f} ms); worker threads while waiting: {threads_waiting}")
    assert max(during) < 1.0
    assert lags[-1] < 10  # of a 30 s wait, with the safety net at 300 s: every one was woken


def test_a_lost_wake_up_is_answered_by_the_safety_net(agent, actions, approver, settings, caplog, figures):
    # Re-reads every 0.2 s × 10 = 2 s; the wake-up is published to a Redis that is not there.
    with asgi_server(workers=1, env={"API_LONG_POLL_MAX_SECONDS": 60, "API_LONG_POLL_INTERVAL_SECONDS": 0.2}) as server:
        approval_id = _dispatch(server, agent.token)["approval_id"]
        waiter = Waiter(server.port, agent.token, approval_id, wait=30)
        waiter.start()
        wait_until(_subscribers, 10, "the server subscribed to the wake-ups")
        time.sleep(1.0)
        settings.REDIS_URL = "redis://127.0.0.1:1/8"  # nothing listens on port 1: the announcement is lost
        with caplog.at_level(logging.WARNING, logger="approvals.waiting"):
            approval_services.record_decision(approval_id, actor=approver, verdict="approve")
        decided = time.monotonic()
        waiter.join(35)

    assert "could not announce that approval request" in caplog.text
    assert waiter.status == 200 and waiter.body["state"] == "approved"
    lag = waiter.answered_at - decided
    figures(f"long-poll with its wake-up lost: answered {lag:.2f} s after the decision (safety net 2 s)")
    assert lag < 2 + 1.5


def test_the_long_poll_also_wakes_under_the_sync_wsgi_server(live_server, agent, actions, approver, settings):
    settings.API_LONG_POLL_MAX_SECONDS, settings.API_LONG_POLL_INTERVAL_SECONDS = 60, 30
    from django.test import Client

    approval_id = Client(headers=agent.headers).post(
        "/api/v1/dispatch", json.dumps({"workflow": "refund-agent", "action": "refund_customer"}),
        content_type="application/json", headers={"Idempotency-Key": uuid.uuid4().hex}).json()["approval_id"]
    port = int(live_server.url.rsplit(":", 1)[1])
    waiter = Waiter(port, agent.token, approval_id, wait=30)
    waiter.start()
    wait_until(_subscribers, 10, "the live server subscribed to the wake-ups")
    time.sleep(0.5)
    approval_services.cancel_request(approval_id, actor=agent.account, reason="no longer needed")
    decided = time.monotonic()
    waiter.join(35)
    assert waiter.status == 200 and waiter.body["state"] == "cancelled" and waiter.body["outcome"] == "deny"
    assert waiter.answered_at - decided < 1.0
    assert wait_until(lambda: _subscribers() == 0, 5, "the request's subscription ended with it") is True
