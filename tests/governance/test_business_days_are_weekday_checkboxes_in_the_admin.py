"""The Django admin's workflow page shows business days as weekday checkboxes, not a raw list such
as [0, 1, 2, 3, 4]; what is ticked is saved through the audited service."""

from __future__ import annotations

import re

import pytest
from django.urls import reverse

from audit import log as audit
from governance.models import Workflow
from tests.governance.support import database_state, events_since, head_seq

pytestmark = pytest.mark.django_db

WEEKDAYS = ["Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"]


def change_url(workflow: Workflow) -> str:
    return reverse("admin:governance_workflow_change", args=[workflow.pk])


def workflow_form(workflow: Workflow, **changes) -> dict:
    """The admin's workflow form as a browser posts it (ticked boxes only), without governed actions."""
    form = {"name": workflow.name, "description": workflow.description, "environment": workflow.environment,
            "owning_team": workflow.owning_team, "autonomy_tier": workflow.autonomy_tier,
            "off_hours_tier": workflow.off_hours_tier or "", "timezone": workflow.timezone,
            "business_days": workflow.business_days, "business_start": "09:00", "business_end": "17:00",
            "holidays": "[]", "actions-TOTAL_FORMS": 0, "actions-INITIAL_FORMS": 0, "actions-MIN_NUM_FORMS": 0,
            "actions-MAX_NUM_FORMS": 1000}
    form.update(changes)
    return form


def checkboxes(page: str) -> dict[str, bool]:
    """Each business-day checkbox's label and whether it is ticked."""
    found = {}
    for tag, label in re.findall(r'(<input type="checkbox" name="business_days"[^>]*>)\s*([^<]+)</label>', page):
        found[label.strip()] = " checked" in tag
    return found


def test_the_workflow_page_shows_business_days_as_weekday_checkboxes(client, admin_user, workflow):
    client.force_login(admin_user)
    page = client.get(change_url(workflow)).content.decode()
    assert checkboxes(page) == {day: day not in ("Sat", "Sun") for day in WEEKDAYS}
    assert "[0, 1, 2, 3, 4]" not in page


def test_ticking_monday_to_thursday_stores_them_through_the_audited_service(client, admin_user, workflow):
    client.force_login(admin_user)
    start = head_seq()
    response = client.post(change_url(workflow), workflow_form(workflow, business_days=[0, 1, 2, 3]))
    assert response.status_code == 302, response.content.decode()[:3000]

    workflow.refresh_from_db()
    assert workflow.business_days == [0, 1, 2, 3]
    [event] = events_since(start)
    assert (event.action, event.actor_label, event.workflow_slug) == ("workflow.updated", "ada", workflow.slug)
    assert audit.event_payload(event)["data"] == {"changes": {"business_days": {"from": [0, 1, 2, 3, 4],
                                                                                 "to": [0, 1, 2, 3]}}}
    page = client.get(change_url(workflow)).content.decode()
    assert checkboxes(page) == {day: day in ("Mon", "Tue", "Wed", "Thu") for day in WEEKDAYS}


def test_no_day_ticked_is_refused_and_nothing_changes(client, admin_user, workflow):
    client.force_login(admin_user)
    before = database_state()
    form = workflow_form(workflow)
    del form["business_days"]  # a browser sends nothing for a group of unticked boxes
    response = client.post(change_url(workflow), form)
    assert response.status_code == 200 and "This field is required." in response.content.decode()
    assert database_state() == before


def test_a_workflow_added_in_the_admin_gets_the_ticked_days(client, admin_user):
    client.force_login(admin_user)
    start = head_seq()
    form = workflow_form(Workflow(name="Voucher agent"), business_days=[1, 3, 5])
    response = client.post(reverse("admin:governance_workflow_add"), {**form, "slug": "voucher-agent"})
    assert response.status_code == 302, response.content.decode()[:3000]
    assert Workflow.objects.get(slug="voucher-agent").business_days == [1, 3, 5]
    [event] = events_since(start, "workflow.created")
    assert audit.event_payload(event)["data"]["business_days"] == [1, 3, 5]
