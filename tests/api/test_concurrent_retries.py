"""CON-05: a retry storm on one Idempotency-Key creates one approval request."""

from __future__ import annotations

import json
import threading
import time
import urllib.error
import urllib.request
from collections import Counter

import psycopg
import pytest

from approvals.models import ApprovalRequest
from audit.models import AuditEvent

pytestmark = pytest.mark.django_db(transaction=True)

RETRIES = 16


def post(url: str, token: str, body: dict, key: str) -> tuple[int, dict]:
    request = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST", headers={
        "Authorization": f"Bearer {token}", "Content-Type": "application/json", "Idempotency-Key": key})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def test_sixteen_concurrent_retries_with_one_key_create_one_request(live_server, agent, actions):
    url = f"{live_server.url}/api/v1/dispatch"
    body = {"workflow": "refund-agent", "action": "refund_customer", "parameters": {"order": "A-1", "amount": "120"}}
    barrier = threading.Barrier(RETRIES)
    results: list[tuple[int, dict]] = []

    def retry() -> None:
        barrier.wait()
        results.append(post(url, agent.token, body, "storm-1"))

    threads = [threading.Thread(target=retry) for _ in range(RETRIES)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)

    statuses = Counter(status for status, _ in results)
    print(f"\nCON-05 status mix over {RETRIES} concurrent retries: {dict(statuses)}; "
          f"requests created: {ApprovalRequest.objects.count()}")
    assert len(results) == RETRIES and set(statuses) <= {200, 409}
    assert ApprovalRequest.objects.count() == 1
    request_id = ApprovalRequest.objects.get().pk
    assert {b["approval_id"] for s, b in results if s == 200} == {request_id}
    assert all(b["code"] == "request_in_flight" for s, b in results if s == 409)
    assert AuditEvent.objects.filter(action="approval.requested").count() == 1

    # After the storm: the same key answers the same request; another payload under it is refused.
    status, again = post(url, agent.token, body, "storm-1")
    assert status == 200 and again["approval_id"] == request_id
    status, refused = post(url, agent.token, {**body, "parameters": {"order": "B-2"}}, "storm-1")
    assert status == 422 and refused["code"] == "idempotency_key_reused"
    assert ApprovalRequest.objects.count() == 1


def test_a_retry_while_the_first_request_runs_waits_then_gets_409_and_later_the_first_answer(
        live_server, agent, actions, settings):
    settings.IDEMPOTENCY_WAIT_SECONDS = 0.5
    url = f"{live_server.url}/api/v1/dispatch"
    body = {"workflow": "refund-agent", "action": "refund_customer", "parameters": {"order": "A-1"}}
    db = settings.DATABASES["default"]
    first: list[tuple[int, dict]] = []
    # Another session holds the workflow row: the first request claims its key, then waits on it.
    with psycopg.connect(host=db["HOST"], port=db["PORT"], dbname=db["NAME"], user=db["USER"],
                         password=db["PASSWORD"]) as holder:
        holder.execute("SELECT id FROM governance_workflow WHERE slug = 'refund-agent' FOR UPDATE")
        thread = threading.Thread(target=lambda: first.append(post(url, agent.token, body, "slow-1")))
        thread.start()
        time.sleep(1.0)  # the first request is now blocked behind the lock, holding its claim
        status, retried = post(url, agent.token, body, "slow-1")
        holder.rollback()
    thread.join(30)
    assert status == 409 and retried["code"] == "request_in_flight"
    assert first[0][0] == 200 and first[0][1]["decision"] == "pending"
    status, again = post(url, agent.token, body, "slow-1")
    assert status == 200 and again["approval_id"] == first[0][1]["approval_id"]
    assert ApprovalRequest.objects.count() == 1
