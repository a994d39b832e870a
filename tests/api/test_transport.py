"""IN-05 over a real socket: duplicate Idempotency-Key headers and a body far over the upload limit."""

from __future__ import annotations

import http.client
import json
from urllib.parse import urlsplit

import pytest

from approvals.models import ApprovalRequest
from tests.reliability.processes import Services
from tests.reliability.proctree import children

pytestmark = pytest.mark.django_db(transaction=True)

BODY_MB = 64


def connect(live_server) -> http.client.HTTPConnection:
    url = urlsplit(live_server.url)
    return http.client.HTTPConnection(url.hostname, url.port, timeout=30)


def read(conn: http.client.HTTPConnection) -> tuple[int, str, dict]:
    response = conn.getresponse()
    return response.status, response.getheader("Content-Type", ""), json.loads(response.read())


def test_two_idempotency_key_headers_are_refused(live_server, agent, actions):
    conn = connect(live_server)
    body = json.dumps({"workflow": "refund-agent", "action": "refund_customer"}).encode()
    conn.putrequest("POST", "/api/v1/dispatch")
    for name, value in (("Authorization", f"Bearer {agent.token}"), ("Content-Type", "application/json"),
                        ("Content-Length", str(len(body))), ("Idempotency-Key", "a-1"), ("Idempotency-Key", "a-2")):
        conn.putheader(name, value)
    conn.endheaders(body)
    status, content_type, problem = read(conn)
    assert status == 400 and content_type.startswith("application/problem+json")
    assert problem["code"] == "idempotency_key_invalid" and problem["errors"][0]["field"] == "Idempotency-Key"
    assert ApprovalRequest.objects.count() == 0


def peak_rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as status:
        line = next(line for line in status if line.startswith("VmHWM:"))
    return int(line.split()[1]) / 1024


def test_a_body_far_over_the_limit_is_413_without_being_read_into_memory(tmp_path, agent, actions):
    """Against gunicorn, the production server (Django's development server drains request bodies)."""
    services = Services(tmp_path)
    try:
        web = services.web(workers=1)
        worker = next(iter(children(web.process.pid)))
        before = peak_rss_mb(worker)
        conn = http.client.HTTPConnection("127.0.0.1", web.port, timeout=60)
        conn.putrequest("POST", "/api/v1/dispatch")
        for name, value in (("Authorization", f"Bearer {agent.token}"), ("Content-Type", "application/json"),
                            ("Content-Length", str(BODY_MB * 2**20)), ("Idempotency-Key", "big-1")):
            conn.putheader(name, value)
        conn.endheaders()
        chunk = b" " * 2**16
        try:
            for _ in range(BODY_MB * 16):
                conn.send(chunk)
        except OSError:
            pass  # the server answered and closed without reading the rest
        status, content_type, problem = read(conn)
        grown = peak_rss_mb(worker) - before
    finally:
        services.cleanup()
    print(f"\nIN-05 {BODY_MB} MB body: {status} {problem['code']}, peak RSS of the web worker grew {grown:.1f} MB")
    assert status == 413 and content_type.startswith("application/problem+json")
    assert problem["code"] == "payload_too_large"
    assert grown < 16
