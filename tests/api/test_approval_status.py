"""GET /approvals/{id}: state, decisions, due time, level; bounded long-poll; scope."""

from __future__ import annotations

import time

import pytest
from django.test import Client

from approvals import services as approval_services
from tests.api.conftest import assert_problem, dispatch

pytestmark = pytest.mark.django_db


@pytest.fixture
def pending(api, actions, settings):
    settings.API_LONG_POLL_MAX_SECONDS = 0.3
    settings.API_LONG_POLL_INTERVAL_SECONDS = 0.05
    return dispatch(api, "refund_customer", parameters={"order": "A-1"}).json()["approval_id"]


def test_pending_request_shows_state_due_time_and_level(api, pending):
    body = api.get(f"/api/v1/approvals/{pending}").json()
    assert body["id"] == pending and body["state"] == "pending" and body["outcome"] == "pending"
    assert body["level"] == 0 and body["quorum"] == 1 and body["decisions"] == [] and body["due_at"]
    assert body["workflow"] == "refund-agent" and body["action"] == "refund_customer"
    assert body["parameters"] == {"order": "A-1"}


def test_decided_request_shows_the_decision(api, pending, approver):
    approval_services.record_decision(pending, actor=approver, verdict="reject", justification="amount too high")
    body = api.get(f"/api/v1/approvals/{pending}?wait=5").json()
    assert body["state"] == "rejected" and body["outcome"] == "deny" and body["closed_at"]
    assert body["decisions"][0]["verdict"] == "reject" and body["decisions"][0]["decided_by"] == "alice"
    assert body["decisions"][0]["justification"] == "amount too high"


def test_long_poll_is_bounded_by_the_server(api, pending):
    started = time.monotonic()
    body = api.get(f"/api/v1/approvals/{pending}?wait=60").json()
    elapsed = time.monotonic() - started
    assert body["state"] == "pending"
    assert 0.3 <= elapsed < 3


def test_wait_outside_its_range_is_refused(api, pending):
    for wait in ("-1", "61", "nan", "inf", "soon"):
        body = assert_problem(api.get(f"/api/v1/approvals/{pending}?wait={wait}"), 422, "invalid")
        assert body["errors"][0]["in"] == "query" and body["errors"][0]["field"] == "wait"


def test_requests_outside_the_scope_are_404(api, pending, other_workflow, agent_owner):
    from tests import factories
    from tests.api.conftest import Agent, issue

    account = factories.make_service_account("disable-bot", owner=agent_owner, workflows=[other_workflow])
    stranger = Client(headers=Agent(account, issue(account)).headers)
    assert_problem(stranger.get(f"/api/v1/approvals/{pending}"), 404, "not_found")
    assert_problem(api.get("/api/v1/approvals/999999999"), 404, "not_found")
    assert_problem(api.get("/api/v1/approvals/0"), 422, "invalid")
    assert_problem(api.get("/api/v1/approvals/99999999999999999999"), 422, "invalid")


def test_people_read_it_with_their_session_within_their_scope(pending, approver, outsider):
    browser = Client()
    browser.force_login(approver)
    assert browser.get(f"/api/v1/approvals/{pending}").json()["id"] == pending
    browser.force_login(outsider)
    assert_problem(browser.get(f"/api/v1/approvals/{pending}"), 404, "not_found")
