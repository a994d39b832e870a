"""A person in a workflow's scope who may not pull its kill switch is answered 403 saying what they
lack: problem JSON from the API, the site's 403 page from the page, the kill-switch panel in place for
htmx. Nothing changes and nothing is audited."""

from __future__ import annotations

import json

import pytest
from django.test import Client

from audit.models import AuditEvent
from core.problems import CONTENT_TYPE
from governance.models import Workflow

pytestmark = pytest.mark.django_db

MISSING = ("Pausing refund-agent needs the permission to take containment actions on it, or its pause duty; "
           "you have neither.")


@pytest.fixture
def alice(approver) -> Client:
    """Alice approves refund-agent's requests; she may not stop it."""
    client = Client()
    client.force_login(approver)
    return client


def unchanged(workflow: Workflow, events_before: int) -> bool:
    workflow.refresh_from_db()
    return not workflow.paused and AuditEvent.objects.count() == events_before


def test_the_api_answers_403_problem_naming_what_is_missing(alice, workflow):
    events = AuditEvent.objects.count()
    response = alice.post(f"/api/v1/workflows/{workflow.slug}/pause", json.dumps({"reason": "looks wrong"}),
                          content_type="application/json")
    assert response.status_code == 403 and response["Content-Type"] == CONTENT_TYPE
    problem = response.json()
    assert (problem["code"], problem["status"], problem["detail"]) == ("forbidden", 403, MISSING)
    assert unchanged(workflow, events)


def test_the_page_answers_the_sites_403_page_with_the_message(alice, workflow):
    events = AuditEvent.objects.count()
    response = alice.post(f"/workflows/{workflow.slug}/pause/", {"reason": "looks wrong"})
    html = response.content.decode()
    assert response.status_code == 403 and 'id="forbidden"' in html and MISSING in html
    assert "Nothing was changed" in html
    assert unchanged(workflow, events)


def test_htmx_gets_the_kill_switch_panel_with_the_message_in_place(alice, workflow):
    events = AuditEvent.objects.count()
    response = alice.post(f"/workflows/{workflow.slug}/pause/", {"reason": "looks wrong"},
                          headers={"HX-Request": "true"})
    html = response.content.decode()
    assert response.status_code == 403 and html.lstrip().startswith('<section class="card" id="kill-switch"')
    assert "data-swap-refusals" in html and f'<div class="errors" role="alert">{MISSING}</div>' in html
    assert unchanged(workflow, events)


def test_resuming_is_refused_the_same_way(alice, containment_owner, workflow):
    from governance import services

    services.pause_workflow(workflow.pk, actor=containment_owner, reason="incident")
    response = alice.post(f"/workflows/{workflow.slug}/resume/", {"reason": ""})
    assert response.status_code == 403 and MISSING.replace("Pausing", "Resuming") in response.content.decode()
    workflow.refresh_from_db()
    assert workflow.paused


def test_the_owner_still_pauses_from_the_page(containment_owner, workflow):
    client = Client()
    client.force_login(containment_owner)
    response = client.post(f"/workflows/{workflow.slug}/pause/", {"reason": "refunds doubled"})
    assert response.status_code == 302
    workflow.refresh_from_db()
    assert workflow.paused and workflow.paused_reason == "refunds doubled"
