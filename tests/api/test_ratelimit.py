"""Per-token rate limits: exact sliding window in Redis, 429 with Retry-After and problem JSON."""

from __future__ import annotations

import json

import pytest
from django.test import Client

from tests import factories
from tests.api.conftest import Agent, assert_problem, issue

pytestmark = pytest.mark.django_db

PAUSE = "/api/v1/workflows/refund-agent/pause"


def test_over_the_limit_is_429_with_retry_after(api, workflow, agent_owner, settings):
    settings.API_RATE_LIMIT_REQUESTS = 3
    settings.API_RATE_LIMIT_WINDOW_SECONDS = 30
    statuses = [api.post(PAUSE, "{}", content_type="application/json").status_code for _ in range(3)]
    assert statuses == [422, 422, 422]  # counted: the token was valid
    throttled = api.post(PAUSE, json.dumps({"reason": "x"}), content_type="application/json")
    assert_problem(throttled, 429, "rate_limited")
    assert 1 <= int(throttled["Retry-After"]) <= 30
    assert not type(workflow).objects.get(pk=workflow.pk).paused

    other_account = factories.make_service_account("other-bot", owner=agent_owner, workflows=[workflow])
    other = Client(headers=Agent(other_account, issue(other_account)).headers)
    assert other.post(PAUSE, json.dumps({"reason": "x"}), content_type="application/json").status_code == 200


def test_requests_without_a_valid_token_are_not_counted_against_it(api, client, workflow, settings):
    settings.API_RATE_LIMIT_REQUESTS = 2
    for _ in range(5):
        assert client.post(PAUSE, "{}", content_type="application/json",
                           headers={"Authorization": "Bearer rf_wrong"}).status_code == 401
    assert api.post(PAUSE, json.dumps({"reason": "x"}), content_type="application/json").status_code == 200
