"""Signed callbacks: `callback_url` on dispatch, POSTed by a real Celery worker when the request closes."""

from __future__ import annotations

import json
import threading
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from django.test import Client

from approvals import services as approval_services
from approvals.models import ApprovalCallback, ApprovalRequest
from audit.models import AuditEvent
from ringfence_client.callbacks import InvalidCallback, verify_callback
from tests.api.conftest import assert_problem
from tests.support.celery_processes import celery_processes


class Receiver:
    """A local HTTP endpoint that answers the listed statuses in turn (then 200) and keeps what it got."""

    def __init__(self, statuses: list[int]) -> None:
        self.statuses = list(statuses)
        self.received: list[tuple[dict[str, str], bytes, int]] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                status = receiver.statuses.pop(0) if receiver.statuses else 200
                receiver.received.append((dict(self.headers.items()), body, status))
                self.send_response(status)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/ringfence/callback?agent=refund-bot"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def _dispatch(api: Client, **fields) -> object:
    body = {"workflow": "refund-agent", "action": "refund_customer", "parameters": {"order": "A-7"}, **fields}
    return api.post("/api/v1/dispatch", json.dumps(body), content_type="application/json",
                    headers={"Idempotency-Key": uuid.uuid4().hex})


@pytest.mark.django_db(transaction=True)
def test_the_outcome_is_posted_signed_and_retried_after_a_500(api, agent, actions, approver):
    receiver = Receiver([500])
    try:
        with celery_processes(beat=False) as celery:
            answer = _dispatch(api, callback_url=receiver.url).json()
            assert answer["decision"] == "pending"
            approval_id = answer["approval_id"]
            callback = ApprovalCallback.objects.get(request_id=approval_id)
            assert callback.state == "pending" and callback.url == receiver.url and callback.attempts == 0

            approval_services.record_decision(approval_id, actor=approver, verdict="approve")
            celery.wait_for(lambda: ApprovalCallback.objects.get(pk=callback.pk).state != "pending", 30,
                            "the callback was delivered or gave up")
    finally:
        receiver.close()

    callback.refresh_from_db()
    assert callback.state == "delivered" and callback.attempts == 2 and callback.last_status == 200
    assert [status for _, _, status in receiver.received] == [500, 200]
    shown = api.get(f"/api/v1/approvals/{approval_id}").json()
    keys = set()
    for headers, body, _ in receiver.received:
        approval = verify_callback(agent.token, headers, body)  # signed with the dispatching token
        assert approval.id == approval_id and approval.outcome == "allow"
        assert json.loads(body) == shown  # exactly what GET /approvals/{id} answers
        assert headers["X-Ringfence-Event"] == "approval.closed"
        keys.add(headers["Idempotency-Key"])
        with pytest.raises(InvalidCallback):
            verify_callback("rf_another-token", headers, body)
        with pytest.raises(InvalidCallback):
            verify_callback(agent.token, headers, body.replace(b'"allow"', b'"deny"'))
    assert keys == {f"approval-callback-{approval_id}"}

    events = AuditEvent.objects.filter(subject_type="approvals.approvalrequest", subject_id=str(approval_id),
                                       action__startswith="approval.callback_")
    assert [(e.action, e.data.get("attempts")) for e in events.order_by("seq")] == [
        ("approval.callback_registered", None), ("approval.callback_delivered", 2)]
    # Audited without the query string, which may carry a secret.
    assert all("agent=refund-bot" not in json.dumps(e.data) for e in events)


@pytest.mark.django_db(transaction=True)
def test_a_callback_that_keeps_failing_gives_up_and_is_audited(api, agent, actions, approver):
    receiver = Receiver([404])
    try:
        with celery_processes(beat=False) as celery:
            approval_id = _dispatch(api, callback_url=receiver.url).json()["approval_id"]
            approval_services.cancel_request(approval_id, actor=agent.account, reason="not needed")
            celery.wait_for(lambda: ApprovalCallback.objects.get(request_id=approval_id).state != "pending", 30,
                            "the callback gave up")
    finally:
        receiver.close()
    callback = ApprovalCallback.objects.get(request_id=approval_id)
    assert callback.state == "failed" and callback.attempts == 1 and callback.last_status == 404
    assert json.loads(receiver.received[0][1])["state"] == "cancelled"
    failed = AuditEvent.objects.get(action="approval.callback_failed", subject_id=str(approval_id))
    assert failed.reason == "HTTP 404" and failed.data["attempts"] == 1


@pytest.mark.django_db
@pytest.mark.parametrize("url", ["ftp://example.com/hook", "file:///etc/passwd", "javascript:alert(1)",
                                 "example.com/hook", "http://", "https:///path", "http://exa mple.com/",
                                 "http://example.com:99999/", "x" * 10, "https://example.com/" + "a" * 2000])
def test_a_callback_url_that_is_not_http_is_422_and_creates_nothing(api, actions, url):
    body = assert_problem(_dispatch(api, callback_url=url), 422, "invalid")
    assert [(e["in"], e["field"]) for e in body["errors"]] == [("body", "callback_url")]
    assert not ApprovalRequest.objects.exists() and not ApprovalCallback.objects.exists()
    assert not AuditEvent.objects.filter(action__startswith="approval.").exists()


@pytest.mark.django_db
def test_an_answer_that_is_not_pending_registers_no_callback(api, actions):
    answer = _dispatch(api, action="send_receipt", callback_url="https://agent.example.com/hook").json()
    assert answer["decision"] == "allow"
    assert not ApprovalCallback.objects.exists()


@pytest.mark.django_db
def test_a_lost_callback_message_is_found_again_once_due(api, actions, approver, django_capture_on_commit_callbacks):
    import datetime as dt

    import time_machine

    from approvals import callbacks
    from core import clock

    approval_id = _dispatch(api, callback_url="https://agent.example.com/hook").json()["approval_id"]
    assert callbacks.resend_due() == 0  # still pending: nothing to send
    with django_capture_on_commit_callbacks(execute=False):  # the message announcing the close is lost
        approval_services.record_decision(approval_id, actor=approver, verdict="approve")
    assert callbacks.resend_due() == 1
    backoff = clock.now() + dt.timedelta(seconds=30)
    ApprovalCallback.objects.filter(request_id=approval_id).update(attempts=1, next_attempt_at=backoff)
    assert callbacks.resend_due() == 0  # waiting out its backoff
    with time_machine.travel(backoff + dt.timedelta(seconds=1), tick=False):
        assert callbacks.resend_due() == 1
