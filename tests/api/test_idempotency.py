"""Idempotency-Key as the IETF draft says: first answer replayed, other body 422, expiry."""

from __future__ import annotations

import datetime as dt
import json

import pytest
import time_machine

from audit.models import AuditEvent
from core.models import IdempotencyKey
from tests import factories
from tests.api.conftest import Agent, assert_problem, issue

pytestmark = pytest.mark.django_db

PAUSE = "/api/v1/workflows/refund-agent/pause"


def pause(client, reason, key=None):
    headers = {"Idempotency-Key": key} if key else {}
    return client.post(PAUSE, json.dumps({"reason": reason}), content_type="application/json", headers=headers)


def paused_events():
    return AuditEvent.objects.filter(action="workflow.paused").count()


def test_same_key_and_body_returns_the_first_answer_without_a_second_change(api, workflow):
    first = pause(api, "incident 7", key="k-1")
    again = pause(api, "incident 7", key="k-1")
    assert first.status_code == again.status_code == 200
    assert again.json() == first.json()
    assert again["Idempotent-Replayed"] == "true" and "Idempotent-Replayed" not in first
    assert paused_events() == 1


def test_body_is_compared_canonically(api, workflow):
    first = pause(api, "incident 7", key="k-1")
    again = api.post(PAUSE, '{ "reason" :   "incident 7" }', content_type="application/json",
                     headers={"Idempotency-Key": "k-1"})
    assert again.json() == first.json() and again["Idempotent-Replayed"] == "true"


def test_refusals_are_replayed_too(api, workflow):
    pause(api, "first")
    refused = pause(api, "second", key="k-2")
    assert_problem(refused, 409, "already_paused")
    replayed = pause(api, "second", key="k-2")
    assert replayed.content == refused.content and replayed["Idempotent-Replayed"] == "true"


def test_same_key_other_body_is_422_and_changes_nothing(api, workflow):
    pause(api, "incident 7", key="k-1")
    body = assert_problem(pause(api, "another reason", key="k-1"), 422, "idempotency_key_reused")
    assert body["errors"][0]["field"] == "Idempotency-Key"
    assert paused_events() == 1


def test_keys_are_scoped_per_service_account(api, workflow, agent_owner):
    other_account = factories.make_service_account("other-bot", owner=agent_owner, workflows=[workflow])
    other = Agent(other_account, issue(other_account))
    from django.test import Client

    assert pause(api, "incident 7", key="shared").status_code == 200
    # The other account's identical key is its own: it is not replayed the first account's answer.
    assert_problem(pause(Client(headers=other.headers), "incident 7", key="shared"), 409, "already_paused")


def test_malformed_keys_are_400(api, workflow):
    for key in ("a,b", "x" * 256, "naïve"):
        assert_problem(pause(api, "incident", key=key), 400, "idempotency_key_invalid")
    assert paused_events() == 0


def test_keys_expire_after_the_documented_time(api, workflow, containment_owner, settings):
    from governance import services

    start = dt.datetime(2030, 1, 7, 10, 0, tzinfo=dt.UTC)
    with time_machine.travel(start, tick=False):
        assert pause(api, "incident 7", key="k-1").status_code == 200
    row = IdempotencyKey.objects.get(key="k-1")
    assert row.expires_at == start + dt.timedelta(hours=settings.IDEMPOTENCY_KEY_TTL_HOURS)
    services.resume_workflow(workflow.pk, actor=containment_owner)
    with time_machine.travel(start + dt.timedelta(hours=settings.IDEMPOTENCY_KEY_TTL_HOURS, seconds=1), tick=False):
        later = pause(api, "a new incident", key="k-1")
    assert later.status_code == 200 and later.json()["paused_reason"] == "a new incident"
    assert paused_events() == 2
