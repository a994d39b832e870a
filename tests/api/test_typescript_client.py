"""The TypeScript client (clients/typescript) against a live server: `npm ci && npm test` with
RINGFENCE_URL/RINGFENCE_TOKEN, while this test plays the person who decides. Node's test runner
asserts what the agent sees; this test asserts what the server saw: pending → approved → executed
once → outcome reported, a rejected call never run, a lost answer retried into one request."""

from __future__ import annotations

import os
import shutil
import subprocess
import threading
from pathlib import Path

import pytest
from django.db import connection

from approvals import services as approval_services
from approvals.models import ApprovalRequest, Execution
from rollouts.models import Signal
from tests.api.lossy_proxy import LossyProxy

pytestmark = pytest.mark.django_db(transaction=True)

PACKAGE = Path(__file__).resolve().parents[2] / "clients" / "typescript"
VERDICTS = {"TS-1": "approve", "TS-2": "approve", "TS-3": "reject"}  # TS-4 is left pending


@pytest.fixture
def npm() -> str:
    found = shutil.which("npm")
    if found is None or shutil.which("node") is None:
        if os.environ.get("CI"):
            pytest.fail("node and npm are needed (.ci/run installs Debian's nodejs and npm)")
        pytest.skip("node and npm are not installed")
    return found


def person(approver, stop: threading.Event, decided: dict[str, int]) -> None:
    """Decide each request the Node tests open, as soon as it is pending."""
    try:
        while not stop.wait(0.05):
            for req in ApprovalRequest.objects.filter(state="pending", parameters__order__in=list(VERDICTS)):
                verdict = VERDICTS[req.parameters["order"]]
                approval_services.record_decision(req.pk, actor=approver, verdict=verdict,
                                                  justification="" if verdict == "approve" else "not this one")
                decided[req.parameters["order"]] = req.pk
    finally:
        connection.close()


def test_the_typescript_client_runs_guarded_actions_end_to_end(npm, live_server, agent, actions, approver, live_plan,
                                                                settings):
    settings.API_LONG_POLL_INTERVAL_SECONDS = 0.05
    installed = subprocess.run([npm, "ci", "--prefer-offline", "--no-audit", "--no-fund"], cwd=PACKAGE,
                               capture_output=True, text=True, timeout=240)
    assert installed.returncode == 0, installed.stdout + installed.stderr

    proxy = LossyProxy(int(live_server.url.rsplit(":", 1)[1])).start()
    proxy.lose_next = 1
    stop, decided = threading.Event(), {}
    deciding = threading.Thread(target=person, args=(approver, stop, decided))
    deciding.start()
    env = {**os.environ, "RINGFENCE_URL": live_server.url, "RINGFENCE_TOKEN": agent.token,
           "RINGFENCE_LOSSY_URL": f"http://127.0.0.1:{proxy.port}"}
    try:
        tested = subprocess.run([npm, "test"], cwd=PACKAGE, env=env, capture_output=True, text=True, timeout=240)
    finally:
        stop.set()
        deciding.join()
        proxy.stop()
    output = tested.stdout + tested.stderr
    assert tested.returncode == 0, output
    assert "# fail 0" in output and "# skipped 0" in output and "# pass 13" in output, output

    # What the server saw.
    allowed = Execution.objects.get(request__isnull=True)
    assert (allowed.action, allowed.state, allowed.detail) == ("send_receipt", "succeeded", "sent")
    for order in ("TS-1", "TS-2"):
        request = ApprovalRequest.objects.get(parameters__order=order)
        assert request.state == "approved" and decided[order] == request.pk
        [execution] = Execution.objects.filter(request=request)  # claimed once
        assert execution.state == "succeeded" and execution.reported_at
    rejected = ApprovalRequest.objects.get(parameters__order="TS-3")
    assert rejected.state == "rejected" and not Execution.objects.filter(request=rejected).exists()
    lost = ApprovalRequest.objects.get(parameters__order="TS-4")  # one request for two deliveries
    assert lost.state == "pending" and (proxy.lost, proxy.forwarded) == (1, 2)
    assert Signal.objects.filter(plan=live_plan, segment="internal_team:support-ops").count() == 1
