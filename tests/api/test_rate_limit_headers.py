"""Every answer to a counted request says where its caller stands (draft-ietf-httpapi-ratelimit-headers-06)."""

from __future__ import annotations

import json

import pytest

from core import ratelimit
from governance.models import ApiToken
from tests.api.conftest import assert_problem, dispatch

pytestmark = pytest.mark.django_db

PAUSE = "/api/v1/workflows/refund-agent/pause"
FIELDS = ("RateLimit-Limit", "RateLimit-Remaining", "RateLimit-Reset", "RateLimit-Policy")


def quota(response) -> tuple[int, int, int]:
    assert response["RateLimit-Policy"] == "5;w=30"
    return int(response["RateLimit-Limit"]), int(response["RateLimit-Remaining"]), int(response["RateLimit-Reset"])


@pytest.fixture
def five_per_30s(settings):
    settings.API_RATE_LIMIT_REQUESTS = 5
    settings.API_RATE_LIMIT_WINDOW_SECONDS = 30


def test_each_answer_counts_down_and_the_429_says_when_to_come_back(api, workflow, five_per_30s):
    answers = [api.get("/api/v1/workflows"),                                            # 200
               api.post(PAUSE, "{}", content_type="application/json"),                  # 422, counted
               api.get("/api/v1/approvals/999999"),                                     # 404 (async view)
               api.post(PAUSE, json.dumps({"reason": "incident 7"}), content_type="application/json"),  # 200
               api.post(PAUSE, json.dumps({"reason": "again"}), content_type="application/json")]       # 409
    assert [a.status_code for a in answers] == [200, 422, 404, 200, 409]
    assert [quota(a)[:2] for a in answers] == [(5, 4), (5, 3), (5, 2), (5, 1), (5, 0)]
    assert all(1 <= quota(a)[2] <= 30 for a in answers)

    throttled = api.get("/api/v1/workflows")
    assert_problem(throttled, 429, "rate_limited")
    limit, remaining, reset = quota(throttled)
    assert (limit, remaining) == (5, 0)
    assert 1 <= reset <= int(throttled["Retry-After"]) <= 30


def test_a_replayed_answer_carries_the_callers_current_quota(api, actions, five_per_30s):
    first = dispatch(api, "send_receipt", key="k-1")
    replayed = dispatch(api, "send_receipt", key="k-1")
    assert replayed["Idempotent-Replayed"] == "true" and replayed.content == first.content
    assert quota(first)[1] == 4 and quota(replayed)[1] == 3


def test_a_signed_in_person_sees_their_own_quota(client, approver, workflow, five_per_30s):
    client.force_login(approver)
    response = client.get("/api/v1/route", {"workflow": "refund-agent", "segment_kind": "internal_team",
                                            "segment_value": "support-ops"})
    assert response.status_code in (200, 404) and quota(response)[:2] == (5, 4)


def test_answers_that_were_not_counted_carry_no_quota(client, workflow, five_per_30s):
    unauthenticated = client.post(PAUSE, "{}", content_type="application/json",
                                  headers={"Authorization": "Bearer rf_wrong"})
    assert unauthenticated.status_code == 401
    schema = client.get("/api/v1/config/schema.json")
    assert schema.status_code == 200
    for response in (unauthenticated, schema):
        assert not any(name in response for name in FIELDS)


def test_the_local_window_of_the_zero_setup_mode_answers_the_same(api, agent, workflow, five_per_30s, settings):
    settings.REDIS_URL = ""
    token = ApiToken.objects.get(service_account=agent.account)
    try:
        answers = [api.get("/api/v1/workflows") for _ in range(6)]
    finally:
        ratelimit.reset(f"token:{token.pk}")
    assert [a.status_code for a in answers] == [200] * 5 + [429]
    assert [quota(a)[1] for a in answers] == [4, 3, 2, 1, 0, 0]
