"""ACL-09: one token's rate limit holds across two web processes sharing Redis."""

from __future__ import annotations

import json
import threading
import time
from collections import Counter

import pytest

from audit.models import AuditEvent
from tests.reliability.processes import Services

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.timeout(240)]

LIMIT = 40
WINDOW_S = 60
REQUESTS = 120
CLIENTS = 4


@pytest.fixture
def two_web_processes(tmp_path):
    """gunicorn twice (one worker each) on the test database and this test run's Redis."""
    services = Services(tmp_path)
    try:
        limits = {"API_RATE_LIMIT_REQUESTS": LIMIT, "API_RATE_LIMIT_WINDOW_SECONDS": WINDOW_S}
        yield [services.web(f"web{i}", workers=1, **limits) for i in (1, 2)]
    finally:
        services.cleanup()


def test_one_tokens_limit_is_exact_across_two_web_processes(two_web_processes, agent, actions):
    headers = {"Authorization": f"Bearer {agent.token}", "Content-Type": "application/json"}
    body = json.dumps({"workflow": "refund-agent", "action": "send_receipt"}).encode()
    answers: list[tuple[int, dict, dict]] = []
    lock = threading.Lock()

    def client(index: int) -> None:
        for n in range(index, REQUESTS, CLIENTS):
            server = two_web_processes[n % 2]  # alternate between the processes
            response = server.request("POST", "/api/v1/dispatch", body=body,
                                      headers={**headers, "Idempotency-Key": f"acl09-{n}"}, timeout=30)
            with lock:
                answers.append((response.status, response.headers, json.loads(response.body)))

    started = time.monotonic()
    threads = [threading.Thread(target=client, args=(i,)) for i in range(CLIENTS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    elapsed = time.monotonic() - started

    statuses = Counter(status for status, _, _ in answers)
    allowed = [b for s, _, b in answers if s == 200]
    throttled = [(h, b) for s, h, b in answers if s == 429]
    print(f"\nACL-09 {REQUESTS} requests in {elapsed:.1f} s over 2 processes: {dict(statuses)}; "
          f"allowed {len(allowed)} vs limit {LIMIT}")
    assert elapsed < WINDOW_S, "the run must fit in one window for the count to be exact"
    assert len(answers) == REQUESTS and set(statuses) == {200, 429}
    assert len(allowed) == LIMIT and all(b["decision"] == "allow" for b in allowed)
    for response_headers, problem in throttled:
        assert response_headers["content-type"].startswith("application/problem+json")
        assert problem["code"] == "rate_limited" and "decision" not in problem
        assert 1 <= int(response_headers["retry-after"]) <= WINDOW_S
    assert AuditEvent.objects.filter(action="dispatch.allowed").count() == LIMIT
