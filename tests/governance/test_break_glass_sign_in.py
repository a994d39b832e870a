"""The way in when the identity provider is down and password sign-in is off: `manage.py breakglass USER --reason …`
prints a one-time link, valid 15 minutes, that signs the emergency superuser in once. Every step is audited."""

from __future__ import annotations

import io
from datetime import UTC, datetime, timedelta
from urllib.parse import urlparse

import pytest
import time_machine
from django.contrib.auth.models import User
from django.core.management import CommandError, call_command
from django.test import Client

from audit.models import AuditEvent
from governance.models import BreakGlassLink
from tests import factories
from tests.governance.support import head_seq

pytestmark = pytest.mark.django_db

START = datetime(2026, 3, 2, 2, 0, tzinfo=UTC)


def breakglass(*args: str) -> str:
    out = io.StringIO()
    call_command("breakglass", *args, stdout=out)
    return out.getvalue()


def link_path(output: str) -> str:
    return urlparse(output.splitlines()[0]).path


def test_the_link_signs_the_emergency_superuser_in_once_with_password_sign_in_off(client, settings):
    settings.LOCAL_LOGIN = False
    mark = head_seq()
    output = breakglass("breakglass", "--reason", "Okta is down (INC-42)")

    user = User.objects.get(username="breakglass")
    assert user.is_superuser and user.is_staff and not user.has_usable_password()
    path = link_path(output)
    assert path.startswith("/accounts/break-glass/bg_")
    page = client.get(path)
    assert page.status_code == 200 and "Break-glass sign-in" in page.text
    assert BreakGlassLink.objects.get().used_at is None  # opening the link spends nothing

    response = client.post(path)
    assert response.status_code == 302 and response.url == "/"
    assert client.get("/admin/").status_code == 200

    events = list(AuditEvent.objects.filter(seq__gt=mark).order_by("seq"))
    assert [(e.action, e.actor_label) for e in events] == [
        ("user.created", "system:breakglass"), ("user.breakglass_issued", "system:breakglass"),
        ("user.breakglass_used", "breakglass")]
    assert {e.reason for e in events} == {"Okta is down (INC-42)"}
    assert "@" in events[1].data["issued_by"]

    again = Client().post(path)
    assert again.status_code == 409 and "already used" in again.text
    assert AuditEvent.objects.filter(action="user.breakglass_used").count() == 1


def test_an_unused_link_ends_after_15_minutes(client):
    with time_machine.travel(START, tick=False):
        path = link_path(breakglass("breakglass", "--reason", "the provider's certificate expired"))
    with time_machine.travel(START + timedelta(minutes=15), tick=False):
        response = client.post(path)
    assert response.status_code == 409 and "expired" in response.text
    assert not AuditEvent.objects.filter(action="user.breakglass_used").exists()
    with time_machine.travel(START + timedelta(minutes=16), tick=False):
        path = link_path(breakglass("breakglass", "--reason", "second try"))  # the account exists: a new link
        assert client.post(path).status_code == 302


def test_only_the_emergency_superuser_gets_a_link_and_never_without_a_reason(client):
    factories.make_user("alice")
    mark = head_seq()
    with pytest.raises(CommandError, match="not an active superuser"):
        breakglass("alice", "--reason", "to approve my own refund")
    with pytest.raises(CommandError):
        breakglass("breakglass", "--reason", "   ")
    assert not BreakGlassLink.objects.exists() and not User.objects.filter(username="breakglass").exists()
    assert not AuditEvent.objects.filter(seq__gt=mark).exists()
    response = client.post("/accounts/break-glass/bg_not-a-link/")
    assert response.status_code == 404 and "not valid" in response.text
