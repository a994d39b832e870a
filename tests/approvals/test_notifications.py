"""Notices by email and by a signed webhook, received by a real HTTP server on loopback."""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import time_machine
from django.db import IntegrityError, transaction

from approvals import notifications, services
from approvals.models import ApprovalRequest, Delivery, Notice
from tests.support.celery_processes import celery_processes

T0 = dt.datetime(2026, 3, 2, 10, 0, tzinfo=dt.UTC)
SECRET = "webhook-secret-for-tests-" + "s" * 20


class Receiver:
    """A webhook endpoint: records what arrives; answers `status` (200 unless a test changes it)."""

    def __init__(self) -> None:
        self.received: list[dict] = []
        self.status = 200
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's naming
                body = self.rfile.read(int(self.headers["Content-Length"]))
                receiver.received.append({"headers": dict(self.headers), "body": body})
                self.send_response(receiver.status)
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hooks/approvals"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def events(self) -> list[str]:
        return [json.loads(r["body"])["metadata"]["event_type"] for r in self.received]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver(settings):
    hook = Receiver()
    settings.APPROVALS_WEBHOOK_URL, settings.APPROVALS_WEBHOOK_SECRET = hook.url, SECRET
    yield hook
    hook.close()


@pytest.fixture
def frozen():
    with time_machine.travel(T0, tick=False) as traveller:
        yield traveller


def deliver_all(req: ApprovalRequest) -> None:
    """What the worker does after commit: deliver every notice of the request."""
    for notice in Notice.objects.filter(request=req, delivered_at__isnull=True):
        notifications.deliver(notice.pk)


def test_a_new_request_reaches_its_approvers_by_email_and_signed_webhook(make_request, approver, senior_approver,
                                                                        requester, receiver, mailoutbox, frozen):
    req = make_request()
    deliver_all(req)
    assert [m.to for m in mailoutbox] == [["alice@example.com"]]  # not the requester, not the senior yet
    mail = mailoutbox[0]
    assert mail.subject.startswith("[Ringfence] Approval needed: refund_customer on refund-agent")
    assert "refund_amount 120 > 50" in mail.body and f"/approvals/{req.pk}/" in mail.body

    [hit] = receiver.received
    headers, body = hit["headers"], hit["body"]
    expected = "v1=" + hmac.new(SECRET.encode(), headers["X-Ringfence-Timestamp"].encode() + b"." + body,
                                hashlib.sha256).hexdigest()
    assert hmac.compare_digest(headers["X-Ringfence-Signature"], expected)
    assert headers["X-Ringfence-Event"] == "approval.requested"
    assert headers["Idempotency-Key"].startswith("approval-notice-")
    payload = json.loads(body)
    assert payload["text"].startswith("Approval needed: refund_customer on refund-agent")
    assert payload["blocks"][0]["type"] == "section"
    assert payload["metadata"]["event_payload"]["request"] == req.pk


def test_a_notice_is_sent_once_however_often_delivery_runs(make_request, approver, receiver, mailoutbox):
    req = make_request()
    notice = Notice.objects.get(request=req)
    for _ in range(3):  # duplicate task deliveries
        notifications.deliver(notice.pk)
    assert len(mailoutbox) == 1 and len(receiver.received) == 1
    assert Notice.objects.get(pk=notice.pk).delivered_at is not None
    with pytest.raises(IntegrityError), transaction.atomic():  # the same change cannot be noticed twice
        notifications.open_notice(req, Notice.Event.REQUESTED)


def test_each_change_is_told_to_the_people_it_concerns(make_request, approver, senior_approver, requester, receiver,
                                                       mailoutbox, frozen):
    req = make_request()
    window = make_request(mode="override_window", kind="rollback", action="roll_back", idempotency_key="w")
    deliver_all(req)
    deliver_all(window)
    frozen.shift(dt.timedelta(minutes=10))
    services.handle_all_due()
    deliver_all(window)
    deliver_all(req)
    services.record_decision(req.pk, actor=senior_approver, verdict="approve")
    deliver_all(req)
    assert receiver.events() == ["approval_requested", "approval_window_opened", "approval_decided",
                                 "approval_escalated", "approval_decided"]
    subjects = [(m.to[0], m.subject.removeprefix("[Ringfence] ").split(":")[0]) for m in mailoutbox]
    assert subjects == [
        ("alice@example.com", "Approval needed"),
        ("alice@example.com", "Override window"),
        ("rhea@example.com", "Auto-approved"),  # the window ran out: its requester's owner is told
        ("sam@example.com", "Escalated to level 2"),
        ("rhea@example.com", "Approved"),
    ]


def test_a_reminder_goes_out_once_before_the_deadline(make_request, approver, mailoutbox, frozen):
    req = make_request()
    deliver_all(req)
    frozen.shift(dt.timedelta(minutes=7))
    assert notifications.open_due_reminders() == 0  # not yet: two minutes before a ten-minute deadline
    frozen.shift(dt.timedelta(minutes=1, seconds=1))
    assert notifications.open_due_reminders() == 1
    assert notifications.open_due_reminders() == 0  # nothing changed: no second reminder
    deliver_all(req)
    assert [m.subject.split(":")[0] for m in mailoutbox] == ["[Ringfence] Approval needed", "[Ringfence] Reminder"]


def test_a_notice_about_a_request_that_moved_on_is_not_sent(make_request, approver, second_approver, mailoutbox):
    req = make_request()
    services.record_decision(req.pk, actor=second_approver, verdict="approve")
    requested = Notice.objects.get(request=req, event=Notice.Event.REQUESTED)
    assert notifications.deliver(requested.pk) == {"sent": 0, "failed": 0, "skipped": 1}
    assert [m.to for m in mailoutbox] == []


def test_a_failed_webhook_is_recorded_and_retried_without_resending_email(make_request, approver, receiver,
                                                                         mailoutbox, frozen):
    receiver.status = 500
    req = make_request()
    notice = Notice.objects.get(request=req)
    with pytest.raises(notifications.DeliveryFailed):
        notifications.deliver(notice.pk)
    webhook = Delivery.objects.get(notice=notice, channel=Delivery.Channel.WEBHOOK)
    assert webhook.status == Delivery.Status.FAILED and "500" in webhook.last_error
    assert notifications.stale_notice_ids() == []
    frozen.shift(dt.timedelta(seconds=61))
    assert notifications.stale_notice_ids() == [notice.pk]  # the sweep republishes it
    receiver.status = 200
    notifications.deliver(notice.pk)
    assert Delivery.objects.get(pk=webhook.pk).status == Delivery.Status.SENT
    assert len(mailoutbox) == 1 and len(receiver.received) == 2


def test_a_send_another_run_has_in_flight_is_left_to_it_and_retried_if_it_fails(make_request, approver, mailoutbox,
                                                                               frozen):
    req = make_request()
    notice = Notice.objects.get(request=req)
    email = Delivery.objects.create(notice=notice, channel="email", recipient="alice@example.com")
    Delivery.objects.filter(pk=email.pk).update(status="sending", attempts=1, claimed_at=T0)  # another worker's
    assert notifications.deliver(notice.pk) == {"sent": 0, "failed": 0, "skipped": 0}  # the other run's send
    assert mailoutbox == [] and Notice.objects.get(pk=notice.pk).delivered_at is None
    Delivery.objects.filter(pk=email.pk).update(status="failed", last_error="SMTP 451")  # and it failed
    frozen.shift(dt.timedelta(seconds=61))
    assert notifications.stale_notice_ids() == [notice.pk]
    notifications.deliver(notice.pk)
    assert [m.to for m in mailoutbox] == [["alice@example.com"]]
    assert Delivery.objects.get(pk=email.pk).status == "sent" and Notice.objects.get(pk=notice.pk).delivered_at


@pytest.mark.django_db(transaction=True)
def test_the_worker_delivers_after_commit(make_request, approver):
    """End to end: the request commits, a real worker delivers the notice to the real endpoint."""
    hook = Receiver()
    try:
        env = {"APPROVALS_WEBHOOK_URL": hook.url, "APPROVALS_WEBHOOK_SECRET": SECRET, "APPROVALS_EMAIL": "false"}
        with celery_processes(beat=False, env=env) as celery:
            req = make_request()
            celery.wait_for(lambda: hook.received, 15, "the webhook received the notice")
            celery.wait_for_task("approvals.tasks.deliver_notice")
        assert hook.events() == ["approval_requested"]
        assert json.loads(hook.received[0]["body"])["metadata"]["event_payload"]["request"] == req.pk
    finally:
        hook.close()
