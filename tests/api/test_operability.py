"""What an operator watches: /metrics, /healthz, /readyz and JSON logs with one request id from the
web process into the Celery task it caused."""

from __future__ import annotations

import http.client
import json
import re
import socket
import subprocess
import sys
import uuid
from datetime import timedelta

import pytest
import time_machine
from django.test import Client

from core import clock
from tests.api.conftest import dispatch
from tests.support.celery_processes import ROOT, celery_processes, wait_until
from tests.support.web_processes import asgi_server


def _sample(text: str, name: str, **labels: str) -> float | None:
    """The value of one sample of the exposition text (labels matched exactly, in any order)."""
    for line in text.splitlines():
        match = re.fullmatch(rf"{re.escape(name)}(?:\{{(.*)\}})? (\S+)", line)
        if not match:
            continue
        found = dict(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', match[1] or ""))
        if found == labels:
            return float(match[2])
    return None


def test_health_needs_no_login_and_says_which_dependency_failed(client, settings, db):
    assert client.get("/healthz").json() == {"status": "ok"}
    ready = client.get("/readyz")
    assert ready.status_code == 200 and ready.json()["checks"] == {"database": "ok", "broker": "ok", "cache": "ok"}

    settings.CELERY_BROKER_URL = "redis://127.0.0.1:1/0"  # nothing listens there
    refused = client.get("/readyz")
    assert refused.status_code == 503 and refused["Cache-Control"].startswith("max-age=0")
    assert refused.json()["failed"] == ["broker"] and refused.json()["checks"]["broker"].startswith("failed: ")

    with socket.create_server(("127.0.0.1", 0)) as mute:  # takes the connection, never answers
        settings.CELERY_BROKER_URL = f"redis://127.0.0.1:{mute.getsockname()[1]}/0"
        settings.READY_TIMEOUT_SECONDS = 0.3
        silent = client.get("/readyz")
    assert silent.status_code == 503
    assert silent.json()["checks"]["broker"] == "no answer within 0.3 s" and silent.json()["failed"] == ["broker"]


def test_supervisors_reach_health_by_address_whatever_the_hosts_and_https_say(client, settings, db, live_server):
    settings.ALLOWED_HOSTS, settings.SECURE_SSL_REDIRECT = ["ringfence.example.com"], True
    assert client.get("/healthz", HTTP_HOST="127.0.0.1:8000").json() == {"status": "ok"}
    assert client.get("/readyz", HTTP_HOST="127.0.0.1:8000").status_code == 200
    assert client.get("/", HTTP_HOST="127.0.0.1:8000").status_code == 400  # every other page checks the host

    script = [sys.executable, str(ROOT / "scripts" / "wait_ready.py")]
    ready = subprocess.run([*script, f"{live_server.url}/readyz", "10"], capture_output=True, text=True, timeout=30)
    assert ready.returncode == 0, ready.stderr
    with socket.create_server(("127.0.0.1", 0)) as closed:
        port = closed.getsockname()[1]
    refused = subprocess.run([*script, f"http://127.0.0.1:{port}/readyz", "1"], capture_output=True, text=True,
                             timeout=30)
    assert refused.returncode == 1 and f"127.0.0.1:{port}/readyz not ready after 1 s" in refused.stderr


def test_metrics_answer_only_a_trusted_scraper(client, settings, db):
    assert client.get("/metrics").status_code == 200  # the test client is 127.0.0.1, inside the default networks
    assert client.get("/metrics", REMOTE_ADDR="10.1.2.3").status_code == 403

    settings.METRICS_TOKEN = "scrape-" + "x" * 20
    assert client.get("/metrics").status_code == 403
    assert client.get("/metrics", headers={"Authorization": "Bearer wrong"}).status_code == 403
    bearer = {"Authorization": f"Bearer {settings.METRICS_TOKEN}"}
    allowed = client.get("/metrics", REMOTE_ADDR="10.1.2.3", headers=bearer)
    assert allowed.status_code == 200 and allowed["Content-Type"].startswith("text/plain")


def test_metrics_show_the_queue_its_sla_breaches_and_the_decisions(api, agent, actions, settings):
    before = Client().get("/metrics").content.decode()  # the counters may hold earlier tests' counts
    answers = [dispatch(api, action).json() for action in ("refund_customer", "close_account", "send_receipt")]
    assert [a["decision"] for a in answers] == ["pending", "pending", "allow"]
    pending_code, allow_code = answers[0]["code"], answers[2]["code"]

    def decisions(text: str, outcome: str, code: str) -> float:
        return _sample(text, "ringfence_dispatch_decisions_total", workflow="refund-agent", outcome=outcome,
                       code=code, rule="") or 0.0

    text = Client().get("/metrics").content.decode()
    assert _sample(text, "ringfence_approvals_pending", workflow="refund-agent", level="0") == 2
    assert _sample(text, "ringfence_approvals_sla_breached", workflow="refund-agent") is None
    assert _sample(text, "ringfence_timer_lag_seconds") == 0
    assert decisions(text, "pending", pending_code) == decisions(before, "pending", pending_code) + 2
    assert decisions(text, "allow", allow_code) == decisions(before, "allow", allow_code) + 1
    assert _sample(text, "ringfence_audit_unsequenced_entries") == 0
    assert _sample(text, "ringfence_celery_queue_length", queue="celery") is not None
    assert _sample(text, "ringfence_dispatch_duration_seconds_count", outcome="pending") >= 2

    with time_machine.travel(clock.now() + timedelta(hours=30)):  # past the SLA, no worker to fire the timers
        late = Client().get("/metrics").content.decode()
    assert _sample(late, "ringfence_approvals_sla_breached", workflow="refund-agent") == 2
    assert _sample(late, "ringfence_timer_lag_seconds") > 3600


@pytest.mark.django_db(transaction=True)
def test_several_web_processes_count_together(agent, actions, tmp_path):
    with asgi_server(workers=2, env={"PROMETHEUS_MULTIPROC_DIR": tmp_path}) as server:
        for _ in range(12):
            status, body, _ = server.request("POST", "/api/v1/dispatch", token=agent.token, headers={
                "Idempotency-Key": uuid.uuid4().hex}, body={"workflow": "refund-agent", "action": "send_receipt"})
            assert status == 200 and body["decision"] == "allow", body
        scrapes = []
        for _ in range(6):  # each on a connection of its own, to whichever process takes it
            connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
            connection.request("GET", "/metrics")
            scrapes.append(connection.getresponse().read().decode())
            connection.close()
    writers = {path.name.rsplit("_", 1)[-1] for path in tmp_path.glob("*.db")}
    totals = [_sample(text, "ringfence_dispatch_decisions_total", workflow="refund-agent", outcome="allow",
                      code="within_autonomy", rule="") for text in scrapes]
    assert totals == [12.0] * 6, totals
    assert len(writers) == 2, writers  # both processes answered, and every scrape added up both


@pytest.mark.django_db(transaction=True)
def test_json_logs_carry_one_request_id_from_the_request_into_its_task(agent, actions, tmp_path):
    rid = "req-" + uuid.uuid4().hex[:12]
    with celery_processes(beat=False, env={"LOG_FORMAT": "json"}) as celery, \
            asgi_server(workers=1, env={"LOG_FORMAT": "json"}) as server:
        status, body, _ = server.request("POST", "/api/v1/dispatch", token=agent.token, headers={
            "Idempotency-Key": uuid.uuid4().hex, "X-Request-ID": rid},
            body={"workflow": "refund-agent", "action": "refund_customer"})
        assert status == 200 and body["decision"] == "pending", body

        def worker_lines() -> list[dict]:
            return [line for line in _json_lines(celery.log()) if line.get("request_id") == rid]

        task_lines = celery.wait_for(worker_lines, 15, "the worker logged the request's task")
        web_lines = wait_until(lambda: [line for line in _json_lines(server.log())
                                        if line.get("logger") == "ringfence.request"], 10, "the request's line")
    request_line = next(line for line in web_lines if line["path"] == "/api/v1/dispatch")
    assert request_line["request_id"] == rid and request_line["status"] == 200
    assert request_line["method"] == "POST" and request_line["service_account"] == "refund-bot"
    assert request_line["duration_ms"] > 0 and request_line["level"] == "INFO" and "timestamp" in request_line
    assert any("approvals" in line["message"] for line in task_lines), task_lines
    assert not [line for line in _json_lines(server.log()) if "request_id" not in line]


def _json_lines(text: str) -> list[dict]:
    lines = []
    for raw in text.splitlines():
        raw = raw.strip()
        if raw.startswith("{"):
            try:
                lines.append(json.loads(raw))
            except ValueError:
                continue
    return lines
