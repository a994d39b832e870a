"""Pausing a rollout without holding its pause duty: 403 naming the duty, as problem JSON from the
API and as the site's 403 page from the plan page (in the panel for htmx). The plan stays active."""

from __future__ import annotations

import json

import pytest
from django.test import Client

from audit.models import AuditEvent
from rollouts.models import RolloutAction

pytestmark = pytest.mark.django_db

MISSING = "Only an owner of the pause duty of refund-agent may do this."


def settled(plan, events_before: int) -> bool:
    plan.refresh_from_db()
    return (plan.state == "active" and not RolloutAction.objects.filter(plan=plan, kind="pause").exists()
            and AuditEvent.objects.count() == events_before)


def test_the_api_answers_403_problem_naming_the_duty(live_plan, agent_token):
    """The token acts for its service account's owner, the release manager, who holds no pause duty."""
    events = AuditEvent.objects.count()
    response = Client(headers={"Authorization": f"Bearer {agent_token}"}).post(
        f"/api/v1/rollouts/{live_plan.pk}/pause", json.dumps({"reason": "canary red"}), content_type="application/json")
    assert response.status_code == 403 and response["Content-Type"] == "application/problem+json"
    assert (response.json()["code"], response.json()["detail"]) == ("forbidden", MISSING)
    assert settled(live_plan, events)


def test_the_plan_page_answers_the_sites_403_page_with_the_duty(live_plan, bystander):
    events = AuditEvent.objects.count()
    client = Client()
    client.force_login(bystander)
    response = client.post(f"/rollouts/{live_plan.pk}/actions/pause/", {"reason": "canary red"})
    html = response.content.decode()
    assert response.status_code == 403 and 'id="forbidden"' in html and MISSING in html
    assert settled(live_plan, events)

    in_place = client.post(f"/rollouts/{live_plan.pk}/actions/pause/", {"reason": "canary red"},
                           headers={"HX-Request": "true"})
    assert in_place.status_code == 403 and 'id="containment"' in in_place.content.decode()
    assert MISSING in in_place.content.decode()
    assert settled(live_plan, events)
