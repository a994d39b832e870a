"""FLT-01's rule for the API: while PostgreSQL is down nothing answers `allow`; 503 problem JSON
instead, and the service recovers without a restart. Runs on a private cluster (the fault
harness's PrivateCluster) that the test stops with `pg_ctl stop -m immediate`."""

from __future__ import annotations

import json
import subprocess
import threading
import time
from collections import Counter
from dataclasses import dataclass

import pytest
from django.conf import settings

from tests.reliability.pg import PrivateCluster
from tests.reliability.processes import PY, ROOT, Services

pytestmark = pytest.mark.timeout(300)

WARMUP_S, OUTAGE_S, RECOVERY_LIMIT_S = 3.0, 6.0, 30.0

SEED = """
import django; django.setup()
from governance import services
from tests import factories
admin = factories.make_admin("ada")
workflow = factories.make_workflow("refund-agent", actor=admin, autonomy_tier=2)
services.define_action(workflow.pk, actor=admin, name="send_receipt", risk="low")
services.define_action(workflow.pk, actor=admin, name="refund_customer", risk="high")
account = factories.make_service_account("refund-bot", owner=factories.make_user("owen"), workflows=[workflow])
print(services.issue_token(account.pk, actor=admin).raw)
"""


@dataclass
class Answer:
    sent: float
    received: float
    status: int
    body: dict
    key: str


@pytest.fixture
def stack(tmp_path):
    cluster = PrivateCluster("ringfence_flt01")
    services = None
    try:
        cluster.init()
        services = Services(database_url=cluster.url(), redis_url=settings.REDIS_URL, secret_key=settings.SECRET_KEY,
                            checkpoint_key=settings.AUDIT_CHECKPOINT_KEY, workdir=tmp_path)
        env = services.env()
        subprocess.run([PY, "manage.py", "migrate", "-v", "0"], cwd=ROOT, env=env, check=True, timeout=180)
        token = subprocess.run([PY, "-c", SEED], cwd=ROOT, env=env, check=True, timeout=120, capture_output=True,
                               text=True).stdout.strip().splitlines()[-1]
        web = services.web(workers=2, DATABASE_CONNECT_TIMEOUT=2, API_RATE_LIMIT_REQUESTS=100_000)
        yield cluster, services, web, token
    finally:
        if services is not None:
            services.cleanup()
        cluster.destroy()


def test_nothing_answers_allow_while_postgresql_is_down(stack):
    cluster, services, web, token = stack
    answers: list[Answer] = []
    stop = threading.Event()
    lock = threading.Lock()

    def agent(name: str) -> None:
        for n in range(10_000):  # bounded; ends with `stop`
            if stop.is_set():
                return
            action = "send_receipt" if n % 2 else "refund_customer"
            key = f"{name}-{n}"
            sent = time.monotonic()
            try:
                response = web.request("POST", "/api/v1/dispatch", timeout=15, body={
                    "workflow": "refund-agent", "action": action, "parameters": {"n": n}},
                    headers={"Authorization": f"Bearer {token}", "Idempotency-Key": key})
                status, body = response.status, json.loads(response.body)
                body["_content_type"] = response.content_type
            except OSError as error:
                status, body = 0, {"error": str(error)}
            with lock:
                answers.append(Answer(sent, time.monotonic(), status, body, key))
            time.sleep(0.02)

    threads = [threading.Thread(target=agent, args=(f"agent{i}",), daemon=True) for i in range(2)]
    for thread in threads:
        thread.start()
    time.sleep(WARMUP_S)
    cluster.stop("immediate")
    down_at = time.monotonic()
    time.sleep(OUTAGE_S)
    up_begins = time.monotonic()
    cluster.start()
    up_at = time.monotonic()
    deadline = up_at + RECOVERY_LIMIT_S
    while time.monotonic() < deadline and not any(a.status == 200 and a.sent > up_at for a in answers):
        time.sleep(0.1)
    time.sleep(1)
    stop.set()
    for thread in threads:
        thread.join(30)

    during = [a for a in answers if a.sent >= down_at and a.received <= up_begins]
    recovered = [a for a in answers if a.status == 200 and a.sent > up_at]
    first_success = min((a.received for a in recovered), default=None)
    mix = Counter(a.status for a in during)
    allow_during = sum(1 for a in during if a.body.get("decision") == "allow")
    other_5xx = sum(1 for a in answers if a.status >= 500 and a.status != 503)
    print(f"\nFLT-01 {len(answers)} dispatches; during the outage {dict(mix)}, allow answers {allow_during}, "
          f"non-503 5xx {other_5xx}; first success {first_success - up_at:.1f} s after PostgreSQL was back"
          if first_success else "\nFLT-01 no success after restart")

    assert during, "no request was answered while the database was down"
    assert allow_during == 0
    assert all(a.status == 503 and a.body["_content_type"] == "application/problem+json"
               and a.body["code"] == "unavailable" for a in during)
    assert other_5xx == 0
    assert first_success is not None, "the API did not recover without a restart"

    # Every allow that was answered is on the audit trail, and the chain verifies.
    allowed_keys = {a.key for a in answers if a.status == 200 and a.body.get("decision") == "allow"}
    with cluster.admin(cluster.dbname) as conn:
        audited = {row[0] for row in conn.execute(
            "SELECT data->>'idempotency_key' FROM governance_auditevent WHERE action = 'dispatch.allowed'")}
        requests = conn.execute("SELECT count(*) FROM approvals_approvalrequest").fetchone()[0]
        requested = conn.execute(
            "SELECT count(*) FROM governance_auditevent WHERE action = 'approval.requested'").fetchone()[0]
    assert allowed_keys <= audited
    assert requests == requested
    verify = subprocess.run([PY, "manage.py", "verify_audit"], cwd=ROOT, env=services.env(), timeout=120,
                            capture_output=True, text=True)
    assert verify.returncode == 0, verify.stdout + verify.stderr
