"""Sign-in throttling (django-axes): five wrong passwords within the cool-off lock the account and the
address out, on the sign-in page and the admin's alike; the answer is the site's 429 page saying when to
try again, the same whether the password was right or not; lockouts and unlocks are audited."""

from __future__ import annotations

import io
import logging
import re
from datetime import UTC, datetime, timedelta

import pytest
import time_machine
from axes.models import AccessAttempt
from django.core.management import call_command
from django.core.management.base import CommandError
from django.test import Client

from audit import log as audit
from audit.models import AuditEvent
from governance.permissions import Role
from tests import factories
from tests.governance.support import manage, production_env

pytestmark = pytest.mark.django_db

PASSWORD = "pw-for-tests-1234"
LOGIN, ADMIN_LOGIN = "/accounts/login/", "/admin/login/"
HERE, ELSEWHERE = "203.0.113.7", "198.51.100.20"
START = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)


@pytest.fixture(autouse=True)
def _throttle(settings):
    settings.AXES_FAILURE_LIMIT = 5
    settings.AXES_COOLOFF_TIME = timedelta(minutes=15)
    settings.AXES_LOCKOUT_PARAMETERS = ["username", "ip_address"]
    settings.LOGIN_CLIENT_IP_HEADER = ""


@pytest.fixture
def alice(db):
    return factories.make_user("alice", role=Role.APPROVER)


@pytest.fixture
def bob(db):
    return factories.make_user("bob", role=Role.APPROVER)


@pytest.fixture
def clock():
    with time_machine.travel(START, tick=False) as traveller:
        yield traveller


def sign_in(username: str, password: str, *, address: str = HERE, path: str = LOGIN, **headers):
    return Client().post(path, {"username": username, "password": password}, REMOTE_ADDR=address, **headers)


def signed_in(response) -> bool:
    return response.status_code == 302 and "_auth_user_id" in response.client.session


def wrong(username: str, times: int, **kwargs) -> list[int]:
    return [sign_in(username, f"not-it-{n}", **kwargs).status_code for n in range(times)]


def lockouts() -> list[AuditEvent]:
    return list(AuditEvent.objects.filter(action="login.locked_out").order_by("seq"))


def test_five_wrong_passwords_lock_the_account_and_the_right_one_is_then_refused(alice, clock):
    assert wrong("alice", 4) == [200] * 4  # the form again, saying the pair is wrong
    fifth = sign_in("alice", "still-not-it")
    right = sign_in("alice", PASSWORD)
    assert (fifth.status_code, right.status_code) == (429, 429) and not signed_in(right)
    page = right.content.decode()
    assert "Too many sign-in attempts" in page and "paused until" in page
    assert "2 Mar, 09:15 UTC" in page and "(in 15\xa0minutes)" in page and right["Retry-After"] == "900"
    # No hint whether the password was right: the refusal of the right one reads like the wrong one's.
    assert right.content == sign_in("alice", "wrong-again").content == fifth.content
    assert "correct" not in page.lower() and "password was" not in page.lower()


def test_the_lockout_is_audited_once_and_failures_go_to_the_security_log(alice, clock, caplog):
    caplog.set_level(logging.INFO, logger="ringfence.security")
    wrong("alice", 5)
    wrong("alice", 3)  # refused while locked: not counted, not audited again
    sign_in("alice", PASSWORD)
    [event] = lockouts()
    payload = audit.event_payload(event)
    assert (event.subject_type, event.subject_id, event.actor_label) == ("auth.user", str(alice.pk),
                                                                         "system:login-throttle")
    assert payload["data"] == {"username": "alice", "ip_address": HERE, "locked_by": ["username", "ip_address"],
                               "failures": 5, "until": "2026-03-02T09:15:00.000000Z"}
    records = [r.getMessage() for r in caplog.records if r.name == "ringfence.security"]
    assert [m for m in records if m.startswith("sign-in failed")] == [
        f"sign-in failed user='alice' address={HERE} failures={n}/5{' locked out' if n == 5 else ''}"
        for n in range(1, 6)]
    assert len([m for m in records if m.startswith("sign-in refused, locked out")]) == 4
    assert audit.verify_database().ok


def test_an_address_that_failed_five_times_is_refused_for_every_account(alice, bob, clock):
    """Per address too: one machine spraying a password across accounts stops after five; the same
    accounts from another address are not held up, the locked username is, from anywhere."""
    for name in ("alice", "carol", "dave", "erin", "frank"):
        wrong(name, 1)
    assert sign_in("bob", PASSWORD).status_code == 429
    assert signed_in(sign_in("bob", PASSWORD, address=ELSEWHERE))
    [event] = lockouts()
    assert (event.subject_type, event.subject_id) == ("login.address", HERE)

    wrong("alice", 5, address=ELSEWHERE)
    assert sign_in("alice", PASSWORD, address="192.0.2.44").status_code == 429


def test_the_admin_login_is_throttled_the_same_way(admin_user, clock):
    assert wrong("ada", 4, path=ADMIN_LOGIN) == [200] * 4
    assert sign_in("ada", "nope", path=ADMIN_LOGIN).status_code == 429
    right = sign_in("ada", PASSWORD, path=ADMIN_LOGIN)
    assert right.status_code == 429 and "Too many sign-in attempts" in right.content.decode()
    assert sign_in("ada", PASSWORD).status_code == 429  # the same lockout on the site's own sign-in page


def test_the_lockout_ends_after_the_cool_off(alice, clock):
    wrong("alice", 5)
    clock.move_to(START + timedelta(minutes=14, seconds=59))
    assert sign_in("alice", PASSWORD).status_code == 429
    clock.move_to(START + timedelta(minutes=15, seconds=1))
    assert signed_in(sign_in("alice", PASSWORD))
    assert len(lockouts()) == 1


def test_a_successful_sign_in_forgets_the_accounts_failures_but_not_others_from_the_address(alice, bob, clock):
    wrong("alice", 4)
    assert signed_in(sign_in("alice", PASSWORD))
    assert wrong("alice", 4) == [200] * 4  # counting starts again
    assert signed_in(sign_in("alice", PASSWORD))

    wrong("mallory", 4)  # someone else's failures from the same address stay counted
    assert signed_in(sign_in("bob", PASSWORD))
    assert wrong("mallory", 1) == [429]


def test_a_trusted_proxy_header_names_the_address_and_only_its_last_entry_counts(alice, bob, clock, settings):
    settings.LOGIN_CLIENT_IP_HEADER = "X-Forwarded-For"
    proxy = "10.0.0.2"
    for n in range(5):  # the client forges a different first entry each time; the proxy appends the real one
        sign_in(f"user{n}", "x", address=proxy, HTTP_X_FORWARDED_FOR=f"192.0.2.{n}, {HERE}")
    assert sign_in("bob", PASSWORD, address=proxy, HTTP_X_FORWARDED_FOR=HERE).status_code == 429
    assert signed_in(sign_in("bob", PASSWORD, address=proxy, HTTP_X_FORWARDED_FOR=ELSEWHERE))
    assert set(AccessAttempt.objects.values_list("ip_address", flat=True)) == {HERE}

    settings.LOGIN_CLIENT_IP_HEADER = ""  # no proxy configured: a client's header is not believed
    wrong("alice", 5, address=proxy, HTTP_X_FORWARDED_FOR=ELSEWHERE)
    assert AccessAttempt.objects.filter(ip_address=proxy).exists()
    assert not AccessAttempt.objects.filter(ip_address=ELSEWHERE).exists()


def test_an_administrator_unlocks_an_account_early_and_it_is_audited(alice, admin_user, clock):
    wrong("alice", 5, address=ELSEWHERE)
    out = io.StringIO()
    call_command("unlock_login", "alice", "--by", "ada", stdout=out)
    assert out.getvalue() == "alice: 5 failed sign-ins forgotten; it may sign in again.\n"
    assert signed_in(sign_in("alice", PASSWORD))
    event = AuditEvent.objects.get(action="login.unlocked")
    assert (event.actor_label, event.subject_type, event.subject_id) == ("ada", "auth.user", str(alice.pk))
    assert audit.event_payload(event)["data"] == {"username": "alice", "ip_address": "", "failures_forgotten": 5,
                                                  "was_locked": True}


def test_an_administrator_unlocks_an_address(alice, admin_user, clock):
    for name in ("carol", "dave", "erin", "frank", "gina"):
        wrong(name, 1)
    call_command("unlock_login", HERE, "--by", "ada", stdout=io.StringIO())
    assert signed_in(sign_in("alice", PASSWORD))
    event = AuditEvent.objects.get(action="login.unlocked")
    assert (event.subject_type, event.subject_id) == ("login.address", HERE)


def test_unlock_refusals_change_nothing(alice, admin_user, clock):
    wrong("alice", 5)
    events = AuditEvent.objects.count()
    with pytest.raises(CommandError, match="Only administrators lift sign-in lockouts"):
        call_command("unlock_login", "alice", "--by", "alice")
    with pytest.raises(CommandError, match="No failed sign-ins are counted against the account bob"):
        call_command("unlock_login", "bob", "--by", "ada")
    with pytest.raises(CommandError, match="No active user"):
        call_command("unlock_login", "alice", "--by", "nobody")
    assert AuditEvent.objects.count() == events
    assert sign_in("alice", PASSWORD).status_code == 429


def test_the_lockout_page_is_the_sites_own_and_the_sign_in_page_stays_open(alice, clock):
    wrong("alice", 5)
    page = sign_in("alice", PASSWORD)
    html = page.content.decode()
    assert page["Content-Type"].startswith("text/html") and '<a class="brand"' in html
    assert re.search(r'<time datetime="2026-03-02T09:15:00\+00:00">', html)
    assert Client().get(LOGIN, REMOTE_ADDR=HERE).status_code == 200  # reading the form is never refused



@pytest.mark.parametrize("variable, value, message", [
    ("LOGIN_LOCKOUT_BY", "user", "LOGIN_LOCKOUT_BY='user': use username, ip_address or username+ip_address"),
    ("LOGIN_CLIENT_IP_HEADER", "X Real IP", "LOGIN_CLIENT_IP_HEADER='X Real IP' is not a header name"),
    ("LOGIN_FAILURE_LIMIT", "0", "LOGIN_FAILURE_LIMIT=0 is below the minimum of 1"),
])
def test_a_malformed_throttling_setting_stops_start_up_naming_it(tmp_path, variable, value, message):
    result = manage(production_env(tmp_path, **{variable: value}), "check")
    assert result.returncode != 0 and message in result.stderr, result.stderr[-2000:]
