"""A pool of PostgreSQL connections per web process (DATABASE_POOL_MAX_SIZE), as the systemd unit
runs it: answers borrow a connection and give it back, the process never holds more than the pool,
and agents waiting on a long-poll hold none of them."""

from __future__ import annotations

import threading
import uuid

import pytest
from django.db import connection

from approvals import services as approval_services
from tests.api.test_waiting import NO_SAFETY_NET, Waiter, _dispatch
from tests.support.celery_processes import wait_until
from tests.support.web_processes import asgi_server

pytestmark = pytest.mark.django_db(transaction=True)


def _backends() -> set[int]:
    """Every other client session on the test database."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT pid FROM pg_stat_activity WHERE datname = current_database() "
                       "AND pid <> pg_backend_pid() AND backend_type = 'client backend'")
        return {pid for (pid,) in cursor.fetchall()}


def test_answers_borrow_pooled_connections_and_waiters_hold_none(agent, actions, approver, request):
    others = _backends()
    with asgi_server(workers=1, env={**NO_SAFETY_NET, "DATABASE_POOL_MAX_SIZE": 2}) as server:
        approval_id = _dispatch(server, agent.token)["approval_id"]
        for _ in range(5):
            _dispatch(server, agent.token, "send_receipt")
        opened = _backends() - others

        sent = threading.Semaphore(0)
        waiters = [Waiter(server.port, agent.token, approval_id, wait=30, sent=sent) for _ in range(20)]
        for waiter in waiters:
            waiter.start()
        for _ in waiters:
            assert sent.acquire(timeout=30)
        answers = [_dispatch(server, agent.token, "send_receipt")["decision"] for _ in range(30)]
        during = _backends() - others
        still_waiting = sum(w.answered_at is None for w in waiters)

        approval_services.record_decision(approval_id, actor=approver, verdict="approve")
        for waiter in waiters:
            waiter.join(35)
        wait_until(lambda: all(w.status for w in waiters), 10, "every waiter answered")

    request.node.user_properties.append(("figure", f"pool of 2: {len(opened)} connection(s) after 6 dispatches, "
                                                  f"{len(during)} after 30 more beside 20 waiters"))
    assert answers == ["allow"] * 30
    assert still_waiting == 20
    assert [w.body["state"] for w in waiters] == ["approved"] * 20
    # Bounded by the pool, and the same connections: none was opened for the 30 later answers.
    assert 1 <= len(during) <= 2
    assert during <= opened


def test_with_no_pool_each_answer_connects_and_leaves_nothing_open(agent, actions):
    others = _backends()
    with asgi_server(workers=1, env={"DATABASE_POOL_MAX_SIZE": 0}) as server:
        for _ in range(3):
            status, body, _ = server.request("POST", "/api/v1/dispatch", token=agent.token, headers={
                "Idempotency-Key": uuid.uuid4().hex}, body={"workflow": "refund-agent", "action": "send_receipt"})
            assert status == 200 and body["decision"] == "allow", body
        wait_until(lambda: _backends() <= others, 10, "the server's connections closed after its answers")
