"""The notification webhook never POSTs where it must not (issue 18, item 8): loopback while the
operator allows nothing, the cloud's metadata address, another scheme, a name resolving to loopback or
a private address, a redirect to loopback; each is a failed delivery naming why, and nothing reaches
the address. An allowed receiver still gets the notice, and its answer is kept nowhere."""

from __future__ import annotations

import json
import re

import pytest

from approvals import notifications
from approvals.models import Delivery, Notice
from audit.models import AuditEvent
from tests.support.receivers import ALLOW_IT, SECRET_ANSWER, Resolver, receiving

pytestmark = pytest.mark.django_db
SECRET = "notification-webhook-secret-" + "n" * 20


@pytest.fixture
def send(settings, make_request, approver, mailoutbox):
    """Open a request (its notice goes to Alice by email and to `url`), deliver it once, and return
    the webhook's delivery row."""
    settings.WEBHOOK_ALLOWED_NETWORKS = []
    settings.APPROVALS_WEBHOOK_SECRET = SECRET

    def deliver_to(url: str) -> Delivery:
        settings.APPROVALS_WEBHOOK_URL = url
        notice = Notice.objects.get(request=make_request())
        try:
            notifications.deliver(notice.pk)
        except notifications.DeliveryFailed:
            pass
        assert [m.to for m in mailoutbox][-1:] == [["alice@example.com"]]  # the email went regardless
        return Delivery.objects.get(notice=notice, channel=Delivery.Channel.WEBHOOK)

    return deliver_to


def assert_failed(delivery: Delivery, reason: str) -> None:
    assert (delivery.status, delivery.attempts, delivery.last_error) == (Delivery.Status.FAILED, 1, reason)


def test_loopback_is_refused_when_the_operator_allows_nothing(send):
    with receiving() as receiver:
        delivery = send(receiver.url("/hooks/approvals"))
    assert_failed(delivery, "webhook target 127.0.0.1 is a loopback address" + ALLOW_IT)
    assert receiver.received == []


@pytest.mark.parametrize(("url", "reason"), [
    ("http://169.254.169.254/latest/meta-data/", "webhook target 169.254.169.254 is a link-local address" + ALLOW_IT),
    ("ftp://hooks.example.com/approvals", "webhook target uses ftp://; only http:// and https:// are sent"),
    ("http://192.168.1.20/approvals", "webhook target 192.168.1.20 is a private address" + ALLOW_IT),
    ("http://[::1]:9/approvals", "webhook target ::1 is a loopback address" + ALLOW_IT),
])
def test_a_target_outside_the_public_internet_is_a_failed_delivery_that_names_it(send, url, reason):
    assert_failed(send(url), reason)


def test_a_name_that_resolves_to_loopback_is_refused_and_nothing_arrives(send):
    with receiving() as receiver:
        delivery = send(receiver.url("/hooks/approvals", host="localhost"))
    assert delivery.status == Delivery.Status.FAILED
    assert re.fullmatch(r"webhook target localhost resolves to (127\.0\.0\.1|::1), a loopback address" + ALLOW_IT,
                        delivery.last_error), delivery.last_error
    assert receiver.received == []


def test_a_name_whose_dns_answer_is_private_is_refused(send, monkeypatch):
    Resolver(monkeypatch, {"chat-relay.example.com": "172.16.8.9"})
    assert_failed(send("https://chat-relay.example.com/hooks/approvals"),
                  "webhook target chat-relay.example.com resolves to 172.16.8.9, a private address" + ALLOW_IT)


def test_a_redirect_from_an_allowed_receiver_to_loopback_is_not_followed(send, settings):
    with receiving(host="127.0.0.1") as inside, receiving(host="127.0.0.2", status=307) as outside:
        outside.location = inside.url("/internal")
        settings.WEBHOOK_ALLOWED_NETWORKS = ["127.0.0.2/32"]
        delivery = send(outside.url("/hooks/approvals"))
    assert_failed(delivery, "webhook answered 307: redirects are not followed")
    assert len(outside.received) == 1 and inside.received == []


def test_an_allowed_receiver_gets_the_signed_notice_and_its_answer_is_kept_nowhere(send, settings):
    with receiving(host="127.0.0.2") as receiver:
        settings.WEBHOOK_ALLOWED_NETWORKS = ["127.0.0.0/8"]
        delivery = send(receiver.url("/hooks/approvals"))
    assert (delivery.status, delivery.last_error) == (Delivery.Status.SENT, "")
    request = receiver.received[0]
    assert json.loads(request["body"])["metadata"]["event_type"] == "approval_requested"
    assert request["headers"]["X-Ringfence-Signature"].startswith("v1=")
    secret = SECRET_ANSWER.decode()
    kept = [*Delivery.objects.values_list("last_error", flat=True),
            *(json.dumps(d) for d in Notice.objects.values_list("data", flat=True)),
            *(f"{e.reason} {json.dumps(e.data)} {e.canonical}" for e in AuditEvent.objects.all())]
    assert all(secret not in text for text in kept)
