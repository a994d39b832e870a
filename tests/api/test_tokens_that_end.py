"""API tokens end: API_TOKEN_MAX_DAYS after they are issued; a rotation gives the agent a successor
while the old token works for the overlap; an expired, revoked or disabled token is refused with a
401 that says why; every step is audited; last use is written at most once a minute."""

from __future__ import annotations

import datetime as dt
import os
import subprocess
import sys

import pytest
import time_machine
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext

from audit.models import AuditEvent
from core import clock
from core.errors import TransitionRefused
from governance import services
from governance.models import ApiToken
from tests import factories
from tests.support.celery_processes import ROOT, current_database_url

pytestmark = pytest.mark.django_db


def _bearer(raw: str) -> Client:
    return Client(headers={"Authorization": f"Bearer {raw}"})


def _status(raw: str) -> tuple[int, str]:
    answer = _bearer(raw).get("/api/v1/workflows")
    return answer.status_code, answer.json().get("code", "") if answer.status_code != 200 else ""


@pytest.fixture
def account(workflow):
    return factories.make_service_account("refund-bot", owner=factories.make_user("owen"), workflows=[workflow])


def test_a_token_ends_after_the_configured_days_and_then_says_it_expired(settings, account, admin_user):
    settings.API_TOKEN_MAX_DAYS = 30
    issued = services.issue_token(account.pk, actor=admin_user, label="ci")
    assert issued.token.expires_at - issued.token.created_at == pytest.approx(dt.timedelta(days=30),
                                                                              abs=dt.timedelta(seconds=5))
    assert _status(issued.raw) == (200, "")
    with time_machine.travel(issued.token.expires_at + dt.timedelta(seconds=1)):
        answer = _bearer(issued.raw).get("/api/v1/workflows")
        assert answer.status_code == 401
        assert answer["Content-Type"].startswith("application/problem+json")
        assert answer.json()["code"] == "token_expired" and "expired on" in answer.json()["detail"]
    assert AuditEvent.objects.get(action="token.issued", subject_id=str(issued.token.pk)).data["expires_at"]


def test_revoked_and_unknown_tokens_are_told_apart(account, admin_user):
    issued = services.issue_token(account.pk, actor=admin_user)
    services.revoke_token(issued.token.pk, actor=admin_user, reason="leaked")
    assert _status(issued.raw) == (401, "token_revoked")
    assert _bearer("rf_" + "x" * 43).get("/api/v1/workflows").status_code == 401


def test_rotation_overlaps_then_the_old_token_ends(account, admin_user):
    old = services.issue_token(account.pk, actor=admin_user, label="deploy")
    new = services.rotate_token(old.token.pk, actor=admin_user, overlap=dt.timedelta(hours=2))
    assert new.token.label == "deploy" and new.raw != old.raw
    assert _status(old.raw) == (200, "") and _status(new.raw) == (200, "")
    event = AuditEvent.objects.get(action="token.rotated")
    assert event.data["prefix"] == old.token.prefix and event.data["new_prefix"] == new.token.prefix
    with pytest.raises(TransitionRefused, match="already rotated"):
        services.rotate_token(old.token.pk, actor=admin_user)
    with time_machine.travel(clock.now() + dt.timedelta(hours=2, seconds=1)):
        assert _status(old.raw) == (401, "token_expired")
        assert _status(new.raw) == (200, "")


def test_only_administrators_rotate_and_a_refusal_changes_nothing(account, admin_user, approver):
    issued = services.issue_token(account.pk, actor=admin_user)
    before = (ApiToken.objects.count(), AuditEvent.objects.count())
    with pytest.raises(TransitionRefused):
        services.rotate_token(issued.token.pk, actor=approver)
    with pytest.raises(TransitionRefused):
        services.rotate_token(issued.token.pk, actor=admin_user, overlap=dt.timedelta(hours=-1))
    assert (ApiToken.objects.count(), AuditEvent.objects.count()) == before


def test_last_use_is_written_at_most_once_a_minute(account, admin_user):
    issued = services.issue_token(account.pk, actor=admin_user)
    client = _bearer(issued.raw)
    client.get("/api/v1/workflows")
    first = ApiToken.objects.get(pk=issued.token.pk).last_used_at
    with CaptureQueriesContext(connection) as queries:
        for _ in range(5):
            client.get("/api/v1/workflows")
    assert not [q for q in queries.captured_queries if q["sql"].startswith("UPDATE") and "last_used_at" in q["sql"]]
    assert ApiToken.objects.get(pk=issued.token.pk).last_used_at == first


def test_the_page_rotates_a_token_and_shows_the_new_one_once(client, account, admin_user, workflow):
    issued = services.issue_token(account.pk, actor=admin_user)
    client.force_login(admin_user)
    page = client.post(f"/workflows/{workflow.slug}/service-accounts/{account.pk}/tokens/{issued.token.pk}/rotate/")
    assert page.status_code == 200 and page["Cache-Control"] == "no-store"
    successor = ApiToken.objects.get(pk=issued.token.pk).replaced_by
    assert successor is not None and successor.prefix in page.content.decode()
    assert "rotated: ends with its overlap" in page.content.decode()


@pytest.mark.django_db(transaction=True)
def test_the_command_rotates_as_a_named_administrator(workflow, admin_user):
    account = factories.make_service_account("cli-bot", owner=factories.make_user("olga"), workflows=[workflow])
    issued = services.issue_token(account.pk, actor=admin_user)
    env = {**os.environ, "DATABASE_URL": current_database_url()}
    done = subprocess.run([sys.executable, "manage.py", "rotate_token", issued.token.prefix, "--by",
                           admin_user.username, "--overlap-hours", "1"], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    raw = done.stdout.split("new token (shown once): ", 1)[1].split()[0]
    assert _status(raw) == (200, "")
    refused = subprocess.run([sys.executable, "manage.py", "rotate_token", issued.token.prefix, "--by", "nobody"],
                             cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert refused.returncode != 0 and "No active user" in refused.stderr
