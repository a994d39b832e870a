"""Agents' callbacks never go where they must not (issue 18, item 8). A `callback_url` written as an
address Ringfence does not send to is refused on dispatch (422 naming the field); a name is checked
when the callback is sent: loopback, the metadata address, another scheme, a private DNS answer or a
redirect to loopback gives up at once, audited with the reason, and nothing reaches the address."""

from __future__ import annotations

import json
import re

import pytest

from approvals import callbacks
from approvals import services as approval_services
from approvals.models import ApprovalCallback, ApprovalRequest
from audit.models import AuditEvent
from ringfence_client.callbacks import verify_callback
from tests.api.conftest import assert_problem, dispatch
from tests.support.receivers import ALLOW_IT, SECRET_ANSWER, Resolver, receiving

pytestmark = pytest.mark.django_db


@pytest.fixture
def closed_with_callback(api, actions, approver):
    """Dispatch a high-risk refund with `callback_url`, approve it, run one delivery attempt."""
    def run(url: str, *, before_sending=lambda callback: None) -> tuple[str, ApprovalCallback]:
        answer = dispatch(api, "refund_customer", parameters={"order": "A-7"}, callback_url=url)
        assert answer.status_code == 200 and answer.json()["decision"] == "pending", answer.content
        approval_id = answer.json()["approval_id"]
        approval_services.record_decision(approval_id, actor=approver, verdict="approve")
        callback = ApprovalCallback.objects.get(request_id=approval_id)
        before_sending(callback)
        outcome = callbacks.attempt_delivery(callback.pk)
        callback.refresh_from_db()
        return outcome, callback
    return run


def assert_given_up(outcome: str, callback: ApprovalCallback, reason: str) -> None:
    assert outcome == "failed"
    assert (callback.state, callback.attempts, callback.last_status, callback.last_error) == (
        "failed", 1, None, reason)
    failed = AuditEvent.objects.get(action="approval.callback_failed", subject_id=str(callback.request_id))
    assert failed.reason == reason and failed.data["attempts"] == 1


@pytest.mark.parametrize(("url", "reason"), [
    ("http://127.0.0.1:9/hook", "Callback target 127.0.0.1 is a loopback address" + ALLOW_IT),
    ("http://169.254.169.254/latest/meta-data/", "Callback target 169.254.169.254 is a link-local address" + ALLOW_IT),
    ("http://[::ffff:127.0.0.1]:9/hook", "Callback target ::ffff:127.0.0.1 is an IPv4-mapped loopback address"
     + ALLOW_IT),
    ("http://0x7f000001:9/hook", "Callback target 0x7f000001 is a loopback address" + ALLOW_IT),
    ("http://127.1:9/hook", "Callback target 127.1 is a loopback address" + ALLOW_IT),
    ("https://10.1.2.3/hook", "Callback target 10.1.2.3 is a private address" + ALLOW_IT),
    ("ftp://agent.example.com/hook", "Only http:// and https:// callback URLs are accepted."),
])
def test_a_callback_url_written_as_a_refused_address_is_422_and_creates_nothing(allow, api, actions, url, reason):
    body = assert_problem(dispatch(api, "refund_customer", parameters={"order": "A-7"}, callback_url=url),
                          422, "invalid")
    assert [(e["in"], e["field"]) for e in body["errors"]] == [("body", "callback_url")]
    assert reason in body["errors"][0]["message"], body
    assert not ApprovalRequest.objects.exists() and not ApprovalCallback.objects.exists()


def test_the_allow_list_admits_an_address_on_dispatch(allow, api, actions):
    allow("10.0.0.0/8")
    answer = dispatch(api, "refund_customer", parameters={"order": "A-7"}, callback_url="https://10.1.2.3/hook")
    assert answer.status_code == 200 and ApprovalCallback.objects.get().url == "https://10.1.2.3/hook"


def test_a_name_that_resolves_to_loopback_gives_up_when_sent_and_nothing_arrives(allow, closed_with_callback):
    with receiving() as receiver:
        outcome, callback = closed_with_callback(receiver.url("/callback", host="localhost"))
    assert re.fullmatch(r"callback target localhost resolves to (127\.0\.0\.1|::1), a loopback address" + ALLOW_IT,
                        callback.last_error), callback.last_error
    assert_given_up(outcome, callback, callback.last_error)
    assert receiver.received == []


def test_a_name_whose_dns_answer_is_private_gives_up_when_sent(allow, closed_with_callback, monkeypatch):
    Resolver(monkeypatch, {"agent.internal.example": "10.9.8.7"})
    outcome, callback = closed_with_callback("https://agent.internal.example/callback")
    assert_given_up(outcome, callback,
                    "callback target agent.internal.example resolves to 10.9.8.7, a private address" + ALLOW_IT)


def test_an_address_the_operator_stopped_allowing_is_refused_when_sent(allow, closed_with_callback):
    """Saved while the allow-list held them; checked again when sent."""
    allow("127.0.0.0/8", "169.254.0.0/16")
    with receiving() as receiver:
        outcome, callback = closed_with_callback(receiver.url("/callback"), before_sending=lambda _: allow())
        assert_given_up(outcome, callback, "callback target 127.0.0.1 is a loopback address" + ALLOW_IT)
    assert receiver.received == []
    allow("169.254.0.0/16")
    outcome, callback = closed_with_callback("http://169.254.169.254/latest/meta-data/",
                                             before_sending=lambda _: allow())
    assert_given_up(outcome, callback, "callback target 169.254.169.254 is a link-local address" + ALLOW_IT)


def test_a_callback_saved_with_another_scheme_before_the_check_is_refused_when_sent(allow, closed_with_callback):
    def made_long_ago(callback: ApprovalCallback) -> None:
        ApprovalCallback.objects.filter(pk=callback.pk).update(url="ftp://agent.example.com/callback")

    outcome, callback = closed_with_callback("https://agent.example.com/callback", before_sending=made_long_ago)
    assert_given_up(outcome, callback, "callback target uses ftp://; only http:// and https:// are sent")


def test_a_redirect_from_an_allowed_receiver_to_loopback_is_not_followed(allow, closed_with_callback):
    allow("127.0.0.2/32")
    with receiving(host="127.0.0.1") as inside, receiving(host="127.0.0.2", status=302) as outside:
        outside.location = inside.url("/internal")
        outcome, callback = closed_with_callback(outside.url("/callback"))
    assert outcome == "failed"
    assert (callback.state, callback.last_status, callback.last_error) == ("failed", 302, "redirects are not followed")
    assert len(outside.received) == 1 and inside.received == []


def test_an_allowed_receiver_gets_the_signed_callback_and_its_answer_is_kept_nowhere(
        allow, agent, closed_with_callback):
    allow("127.0.0.0/8")
    with receiving(host="127.0.0.2") as receiver:
        outcome, callback = closed_with_callback(receiver.url("/callback?agent=refund-bot"))
    assert outcome == "delivered" and (callback.state, callback.last_status) == ("delivered", 200)
    request = receiver.received[0]
    assert request["path"] == "/callback?agent=refund-bot"
    assert verify_callback(agent.token, request["headers"], request["body"]).id == callback.request_id
    secret = SECRET_ANSWER.decode()
    kept = [callback.last_error, *(f"{e.reason} {json.dumps(e.data)} {e.canonical}" for e in AuditEvent.objects.all())]
    assert all(secret not in text for text in kept)
