"""The plan editor refuses a webhook executor URL that Ringfence would refuse to send to, when the
URL shows it: another scheme, or an address written in it that is loopback, link-local, private, …
(issue 18, item 8). A name is accepted here and checked each time the executor sends."""

from __future__ import annotations

import pytest
from django.test import Client

from audit.models import AuditEvent
from rollouts.models import RolloutPlan
from tests.rollouts.test_pages import editor_data

pytestmark = pytest.mark.django_db
ALLOW_IT = "; allow it with WEBHOOK_ALLOWED_NETWORKS."


@pytest.fixture
def editor(release_manager, settings):
    settings.WEBHOOK_ALLOWED_NETWORKS = []
    client = Client()
    client.force_login(release_manager)
    return client


@pytest.mark.parametrize(("url", "error"), [
    ("http://127.0.0.1:8080/rollback", "Webhook target 127.0.0.1 is a loopback address" + ALLOW_IT),
    ("http://169.254.169.254/latest/meta-data/", "Webhook target 169.254.169.254 is a link-local address" + ALLOW_IT),
    ("ftp://deploy.example.com/rollback", "Webhook target uses ftp://; only http:// and https:// are sent."),
    ("http://[::1]/rollback", "Webhook target ::1 is a loopback address" + ALLOW_IT),
    ("http://192.168.0.10/rollback", "Webhook target 192.168.0.10 is a private address" + ALLOW_IT),
])
def test_a_refused_webhook_url_is_a_form_error_and_saves_nothing(editor, url, error):
    response = editor.post("/rollouts/new/", editor_data(executor="webhook", webhook_url=url))
    assert response.status_code == 422
    assert error in response.content.decode()
    assert not RolloutPlan.objects.exists()
    assert not AuditEvent.objects.filter(action="rollout.plan_created").exists()


def test_a_refused_address_is_refused_on_a_flag_plan_too(editor):
    response = editor.post("/rollouts/new/", editor_data(webhook_url="http://169.254.169.254/"))
    assert response.status_code == 422 and not RolloutPlan.objects.exists()


def test_a_name_and_an_allowed_address_are_saved(editor, settings):
    response = editor.post("/rollouts/new/", editor_data(executor="webhook",
                                                         webhook_url="https://deploy.example.com/ringfence"))
    assert response.status_code == 302
    settings.WEBHOOK_ALLOWED_NETWORKS = ["10.20.0.0/16"]
    response = editor.post("/rollouts/new/", editor_data(release_version="refund-v8", executor="webhook",
                                                         webhook_url="http://10.20.1.5:8080/ringfence"))
    assert response.status_code == 302
    assert sorted(RolloutPlan.objects.values_list("webhook_url", flat=True)) == [
        "http://10.20.1.5:8080/ringfence", "https://deploy.example.com/ringfence"]
