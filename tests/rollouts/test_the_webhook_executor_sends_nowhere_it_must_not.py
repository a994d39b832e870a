"""The webhook executor never POSTs where it must not (issue 18, item 8): a plan's URL on loopback, the
cloud's metadata address, another scheme, a name resolving to a private address or a redirect to
loopback is refused, named, recorded as a failed attempt, and nothing reaches the address; an
allowed receiver still gets the action; and what a receiver answers appears on no page and in no
audit data."""

from __future__ import annotations

import itertools
import json
import re

import pytest
from django.test import Client

from audit.models import AuditEvent
from rollouts import containment, executors, plans
from rollouts.models import ActionAttempt, RolloutAction, RolloutPlan
from tests.support.receivers import ALLOW_IT, SECRET_ANSWER, Resolver, receiving, receiving_on_the_same_port, tls_for

pytestmark = pytest.mark.django_db


@pytest.fixture
def roll_back(make_plan, owner, release_manager):
    """Start a webhook plan posting to `url`, roll it back, run one executor attempt."""
    versions = itertools.count(2)

    def run(url: str) -> tuple[RolloutPlan, RolloutAction]:
        plan = make_plan(executor="webhook", webhook_url=url, release_version=f"prompt-v{next(versions)}")
        plan = plans.start_rollout(plan.pk, actor=release_manager)
        action = containment.roll_back(plan.pk, actor=owner, reason="p95 doubled")
        executors.run(action.pk)
        plan.refresh_from_db()
        action.refresh_from_db()
        return plan, action
    return run


def assert_refused(plan: RolloutPlan, action: RolloutAction, reason: str) -> None:
    """Refused at the first attempt, named on the attempt and in the audit trail; the plan did not move."""
    attempt = action.attempt_log.get()
    assert (attempt.outcome, attempt.http_status, attempt.detail) == (ActionAttempt.Outcome.FAILED, None, reason)
    assert action.state == "failed" and plan.state == "active"
    assert AuditEvent.objects.get(action="rollout.action_failed").reason == reason


def test_loopback_is_refused_when_the_operator_allows_nothing(allow, roll_back):
    with receiving() as receiver:
        plan, action = roll_back(receiver.url("/ringfence/rollback"))
    assert_refused(plan, action, "webhook target 127.0.0.1 is a loopback address" + ALLOW_IT)
    assert receiver.received == []


@pytest.mark.parametrize(("url", "reason"), [
    ("http://169.254.169.254/latest/meta-data/iam/security-credentials/",
     "webhook target 169.254.169.254 is a link-local address" + ALLOW_IT),
    ("ftp://files.example.com/rollback", "webhook target uses ftp://; only http:// and https:// are sent"),
    ("http://10.0.0.5:8080/rollback", "webhook target 10.0.0.5 is a private address" + ALLOW_IT),
    ("http://100.64.0.1/rollback", "webhook target 100.64.0.1 is a shared address" + ALLOW_IT),
    ("http://0.0.0.0:9/rollback", "webhook target 0.0.0.0 is an unspecified address" + ALLOW_IT),
    ("http://224.0.0.1/rollback", "webhook target 224.0.0.1 is a multicast address" + ALLOW_IT),
    ("http://[fd00::1]/rollback", "webhook target fd00::1 is a private address" + ALLOW_IT),
    ("http://[fe80::1]/rollback", "webhook target fe80::1 is a link-local address" + ALLOW_IT),
    ("http://[::ffff:169.254.169.254]/latest/",
     "webhook target ::ffff:169.254.169.254 is an IPv4-mapped link-local address" + ALLOW_IT),
])
def test_a_target_outside_the_public_internet_is_refused_by_name(allow, roll_back, url, reason):
    plan, action = roll_back(url)
    assert_refused(plan, action, reason)


def test_a_name_that_resolves_to_loopback_is_refused_after_resolution(allow, roll_back):
    with receiving() as receiver:
        plan, action = roll_back(receiver.url("/ringfence/rollback", host="localhost"))
    detail = action.attempt_log.get().detail
    assert re.fullmatch(r"webhook target localhost resolves to (127\.0\.0\.1|::1), a loopback address" + ALLOW_IT,
                        detail), detail
    assert_refused(plan, action, detail)
    assert receiver.received == []


def test_a_name_whose_dns_answer_is_a_private_address_is_refused(allow, roll_back, monkeypatch):
    resolver = Resolver(monkeypatch, {"deploy-hooks.example.com": "10.20.30.40"})
    plan, action = roll_back("https://deploy-hooks.example.com/ringfence/rollback")
    assert_refused(plan, action, "webhook target deploy-hooks.example.com resolves to 10.20.30.40, a private address"
                   + ALLOW_IT)
    assert resolver.lookups["deploy-hooks.example.com"] == 1


def test_a_redirect_from_an_allowed_receiver_to_loopback_is_not_followed(allow, roll_back):
    allow("127.0.0.2/32")
    with receiving(host="127.0.0.1") as inside, receiving(host="127.0.0.2", status=302) as outside:
        outside.location = inside.url("/admin/delete-everything")
        plan, action = roll_back(outside.url("/ringfence/rollback"))
    attempt = action.attempt_log.get()
    assert (attempt.outcome, attempt.http_status, attempt.detail) == ("failed", 302, "HTTP 302: redirects are not "
                                                                                     "followed")
    assert action.state == "failed" and plan.state == "active"
    assert len(outside.received) == 1 and inside.received == []


def test_the_connection_goes_to_the_address_that_was_checked_even_if_dns_changes_its_answer(
        allow, roll_back, monkeypatch):
    allow("127.0.0.2/32")
    resolver = Resolver(monkeypatch, {"hooks.example.com": ["127.0.0.2", "127.0.0.1"]})  # a rebinding DNS
    with receiving_on_the_same_port("127.0.0.2", "127.0.0.1") as (checked, rebound):
        plan, action = roll_back(checked.url("/ringfence/rollback", host="hooks.example.com"))
    assert (action.state, plan.state) == ("succeeded", "rolled_back")
    assert resolver.lookups["hooks.example.com"] == 1
    assert len(checked.received) == 1 and rebound.received == []
    assert checked.received[0]["headers"]["Host"] == f"hooks.example.com:{checked.server.server_address[1]}"


def test_https_to_a_checked_address_keeps_the_name_for_sni_the_certificate_and_the_host_header(
        allow, roll_back, monkeypatch, tmp_path):
    allow("127.0.0.2/32")
    context, ca_file = tls_for("hooks.example.test", tmp_path)
    monkeypatch.setenv("SSL_CERT_FILE", str(ca_file))
    Resolver(monkeypatch, {"hooks.example.test": "127.0.0.2"})
    with receiving(host="127.0.0.2", tls=context) as receiver:
        plan, action = roll_back(receiver.url("/ringfence/rollback", host="hooks.example.test"))
        assert (action.state, plan.state) == ("succeeded", "rolled_back")
        assert receiver.server_names == ["hooks.example.test"]
        assert receiver.received[0]["headers"]["Host"] == f"hooks.example.test:{receiver.server.server_address[1]}"

        # The same receiver by its address: its certificate does not name it, so nothing is delivered.
        _, again = roll_back(receiver.url("/ringfence/rollback"))
    attempt = again.attempt_log.get()
    assert attempt.outcome == "retryable_error" and attempt.http_status is None
    assert attempt.detail.startswith("connection failed:") and "certificate" in attempt.detail
    assert len(receiver.received) == 1


def test_an_allowed_receiver_gets_the_action_and_its_answer_is_shown_nowhere(
        allow, roll_back, owner, release_manager, auditor):
    allow("127.0.0.0/8")
    secret = SECRET_ANSWER.decode()
    with receiving(status=200) as receiver:
        plan, action = roll_back(receiver.url("/ringfence/rollback"))
    assert (action.state, plan.state) == ("succeeded", "rolled_back")
    assert json.loads(receiver.received[0]["body"])["event"] == "rollout.rollback"
    with receiving(status=400, answer=b"error: " + SECRET_ANSWER) as refusing:
        failed_plan, failed = roll_back(refusing.url("/ringfence/rollback"))
    assert (failed.state, failed.attempt_log.get().http_status) == ("failed", 400)

    pages = []
    for person, urls in ((owner, ()), (release_manager, ()), (auditor, ("/audit/",))):
        client = Client()
        client.force_login(person)
        for url in (plan.get_absolute_url(), failed_plan.get_absolute_url(), "/rollouts/", *urls):
            response = client.get(url)
            assert response.status_code == 200, (person, url)
            pages.append(response.content.decode())
    assert "#1 ok (HTTP 200, " in pages[0] and "#1 failed (HTTP 400, " in pages[1]
    assert all(secret not in page for page in pages)
    stored = [*ActionAttempt.objects.values_list("detail", flat=True),
              *(json.dumps(r) for r in RolloutAction.objects.values_list("result", flat=True)),
              *(f"{e.reason} {json.dumps(e.data)} {e.canonical}" for e in AuditEvent.objects.all())]
    assert all(secret not in text for text in stored)
    assert AuditEvent.objects.get(action="rollout.action_failed").reason.startswith("HTTP 400 in ")
