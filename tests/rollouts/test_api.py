"""The rollout endpoints of the agent API: signals (IN-02), proposals, the route, tags, containment."""

from __future__ import annotations

import json
import uuid
from datetime import timedelta

import pytest
from django.test import Client

from audit.models import AuditEvent
from core import clock
from rollouts import selectors
from rollouts.models import ContextTag, RolloutAction, Signal

pytestmark = pytest.mark.django_db
PROBLEM = "application/problem+json"


@pytest.fixture
def api(agent_token) -> Client:
    return Client(headers={"Authorization": f"Bearer {agent_token}"})


_minute = {}


@pytest.fixture(autouse=True)
def _one_minute_per_test():
    """Every sample of a test is timed from one whole minute, read once: a test that runs across a
    minute's turn must still send the same observed_at for the same seconds_ago."""
    _minute["start"] = clock.now().replace(second=0, microsecond=0)
    yield
    _minute.clear()


def sample(value="812.5", metric="latency_p95_ms", seconds_ago=10, segment="internal_team:support-ops") -> str:
    """One sample as raw JSON text, so that NaN and 1e309 reach the server as sent."""
    at = (_minute["start"] - timedelta(seconds=seconds_ago)).isoformat()
    return f'{{"metric": "{metric}", "value": {value}, "observed_at": "{at}", "segment": "{segment}"}}'


def post_samples(api: Client, *samples: str, workflow: str = "refund-agent"):
    body = f'{{"workflow": "{workflow}", "samples": [{", ".join(samples)}]}}'
    return api.post("/api/v1/signals", body, content_type="application/json")


def test_a_batch_is_stored_and_duplicates_are_counted_not_stored_twice(api, live_plan):
    first = post_samples(api, sample("810", seconds_ago=30), sample("820", seconds_ago=20),
                         sample("820", seconds_ago=20))
    assert first.status_code == 200, first.content
    assert first.json() == {"plan": live_plan.pk, "received": 3, "stored": 2, "duplicates": 1, "late": 0,
                            "evaluation": "scheduled"}
    again = post_samples(api, sample("999", seconds_ago=30))
    assert again.json()["duplicates"] == 1
    assert sorted(Signal.objects.values_list("value", flat=True)) == [810.0, 820.0]  # the first value is kept
    assert set(Signal.objects.values_list("ring", flat=True)) == {0}


@pytest.mark.parametrize("literal", ["NaN", "Infinity", "-Infinity", "1e309", "-1e309"])
def test_non_finite_numbers_are_refused_naming_the_field_and_nothing_is_stored(api, live_plan, literal):
    response = post_samples(api, sample("900"), sample(literal, seconds_ago=5))
    assert response.status_code == 422 and response["Content-Type"] == PROBLEM
    problem = response.json()
    assert problem["code"] == "non_finite_number"
    assert [e["field"] for e in problem["errors"]] == ["samples.1.value"]
    assert not Signal.objects.exists()


def test_minus_zero_is_a_finite_number(api, live_plan):
    assert post_samples(api, sample("-0", metric="error_rate")).status_code == 200
    assert Signal.objects.get().value == 0


def test_more_than_10000_samples_are_refused_and_nothing_is_stored(api, live_plan):
    at = clock.now().isoformat()
    samples = [{"metric": "latency_p95_ms", "value": 1, "observed_at": at, "segment": f"customer_group:c{i}"}
               for i in range(10_001)]
    response = api.post("/api/v1/signals", json.dumps({"workflow": "refund-agent", "samples": samples}),
                        content_type="application/json")
    assert response.status_code in (413, 422) and response["Content-Type"] == PROBLEM
    assert "samples" in [e["field"] for e in response.json()["errors"]]
    assert not Signal.objects.exists()


def test_unknown_metric_slugs_are_refused_until_registered(api, live_plan):
    response = post_samples(api, sample(metric="latency_p95_ms"), sample(metric="tokens_per_answer"))
    assert response.status_code == 422
    assert response.json()["errors"][0]["field"] == "samples.1.metric"
    assert "tokens_per_answer" in response.json()["errors"][0]["message"]
    assert not Signal.objects.exists()
    from rollouts.models import Metric

    Metric.objects.create(slug="tokens_per_answer", label="Tokens per answer")
    assert post_samples(api, sample(metric="tokens_per_answer")).status_code == 200


def test_refused_samples_leave_the_evaluation_unchanged(api, live_plan):
    before = selectors.evaluate(live_plan, clock.now())
    post_samples(api, sample("900"), sample("900", seconds_ago=20), sample("NaN", seconds_ago=30))
    after = selectors.evaluate(live_plan, clock.now())
    assert [c.status for c in after.triggers] == [c.status for c in before.triggers] == ["inconclusive"] * 2


def test_future_samples_and_unknown_segments_are_refused(api, live_plan):
    response = post_samples(api, sample(seconds_ago=-3600), sample(segment="galaxy:far"))
    assert [e["field"] for e in response.json()["errors"]] == ["samples.0.observed_at", "samples.1.segment"]


def test_each_sample_is_stored_under_its_own_ring_or_the_ring_of_its_segment(api, live_plan):
    """Rings 0 internal_team:support-ops, 1 customer_group:partners, 2 traffic_slice:all."""
    with_ring = sample(segment="customer_group:partners", seconds_ago=40)[:-1] + ', "ring": 2}'
    response = post_samples(api, sample(segment="internal_team:support-ops", seconds_ago=10), with_ring,
                            sample(segment="customer_group:partners", seconds_ago=30),
                            sample(segment="customer_group:acme", seconds_ago=20), sample(segment="", seconds_ago=50))
    assert response.status_code == 200, response.content
    assert sorted(Signal.objects.values_list("segment", "ring"), key=str) == sorted([
        ("internal_team:support-ops", 0), ("customer_group:partners", 2), ("customer_group:partners", 1),
        ("customer_group:acme", 2), ("", None)], key=str)

    unknown_ring = sample(segment="customer_group:partners", seconds_ago=60)[:-1] + ', "ring": 7}'
    refused = post_samples(api, sample(seconds_ago=70), unknown_ring)
    assert refused.status_code == 422 and [e["field"] for e in refused.json()["errors"]] == ["samples.1.ring"]
    assert Signal.objects.count() == 5


def test_signals_need_a_live_rollout(api, workflow):
    response = post_samples(api, sample())
    assert response.status_code == 409 and response.json()["code"] == "no_live_rollout"


def test_a_token_outside_the_workflow_sees_404(api, live_plan, other_workflow):
    assert post_samples(api, sample(), workflow=other_workflow.slug).status_code == 404


def propose(api: Client, key: str, **fields):
    body = {"workflow": "refund-agent", "kind": "rollback", "confidence": 0.9, "reason": "p95 doubled", **fields}
    return api.post("/api/v1/proposals", json.dumps(body), content_type="application/json",
                    headers={"Idempotency-Key": key})


def test_a_proposal_is_idempotent_and_answers_with_its_approval_at_tier_3(api, live_plan, workflow):
    workflow.autonomy_tier = 3
    workflow.save(update_fields=["autonomy_tier"])
    key = uuid.uuid4().hex
    first = propose(api, key, metric="latency_p95_ms", evidence={"p95": [820, 950]})
    assert first.status_code == 201, first.content
    body = first.json()
    assert (body["handling"], body["state"], body["tier"]) == ("gate", "pending_approval", 3)
    assert body["approval_id"] and body["poll_url"] == f"/api/v1/approvals/{body['approval_id']}"
    replay = propose(api, key, metric="latency_p95_ms", evidence={"p95": [820, 950]})
    assert replay.json() == body and replay["Idempotent-Replayed"] == "true"
    assert propose(api, key, metric="error_rate").status_code == 422
    other = propose(api, uuid.uuid4().hex)
    assert other.status_code == 200 and other.json()["id"] == body["id"] and other.json()["created"] is False
    assert RolloutAction.objects.count() == 1
    assert propose(api, "", metric="x").status_code == 400


def test_a_context_tag_through_the_api_turns_a_tier_1_proposal_into_a_request(api, live_plan, workflow):
    workflow.autonomy_tier = 1
    workflow.save(update_fields=["autonomy_tier"])
    tag = api.post("/api/v1/context-tags", json.dumps({
        "workflow": "refund-agent", "kind": "expected_latency_increase", "expected_change_percent": 15,
        "ends_at": (clock.now() + timedelta(hours=2)).isoformat(), "reason": "index migration changes query plans",
    }), content_type="application/json")
    assert tag.status_code == 201, tag.content
    assert tag.json()["label"] == "expected_latency_increase: 15%" and tag.json()["metric"] == "latency_p95_ms"
    assert ContextTag.objects.get().author_service.name == "deploy-bot"
    body = propose(api, uuid.uuid4().hex, metric="latency_p95_ms").json()
    assert body["handling"] == "gate" and body["context_tag"]["label"] == "expected_latency_increase: 15%"
    event = AuditEvent.objects.get(action="rollout.action_proposed")
    assert event.data["evidence"]["context_tag"]["label"] == "expected_latency_increase: 15%"


def test_a_window_tag_needs_no_metric_and_a_change_tag_needs_one(api, live_plan):
    ends = (clock.now() + timedelta(hours=1)).isoformat()
    ok = api.post("/api/v1/context-tags", json.dumps({"workflow": "refund-agent", "kind": "migration_window",
                                                      "ends_at": ends, "reason": "db migration"}),
                  content_type="application/json")
    assert ok.status_code == 201 and ok.json()["label"] == "migration_window: true"
    bad = api.post("/api/v1/context-tags", json.dumps({"workflow": "refund-agent", "kind": "expected_change",
                                                       "ends_at": ends, "reason": "?"}),
                   content_type="application/json")
    assert bad.status_code == 422 and bad.json()["errors"][0]["field"] == "metric"


def route(api: Client, kind="internal_team", value="support-ops", **extra):
    return api.get("/api/v1/route", {"workflow": "refund-agent", "segment_kind": kind, "segment_value": value, **extra})


def test_the_route_serves_the_release_to_exposed_rings_only(api, live_plan, owner):
    assert route(api).json()["version"] == "prompt-v2"
    assert route(api, "customer_group", "partners").json()["version"] == "prompt-v1"
    from rollouts import containment

    containment.expand_rollout(live_plan.pk, actor=owner)
    containment.expand_rollout(live_plan.pk, actor=owner)
    broad = route(api, "account_type", "enterprise").json()
    assert (broad["ring"], broad["exposure_percent"]) == (2, 25)
    keyed = [route(api, "account_type", "enterprise", key=f"user-{i}").json()["version"] for i in range(100)]
    assert 10 <= keyed.count("prompt-v2") <= 40  # about 25 % of keys, the same key always the same answer
    assert route(api, "account_type", "enterprise", key="user-7").json() == route(
        api, "account_type", "enterprise", key="user-7").json()


def test_containment_through_the_api_only_for_a_token_whose_owner_holds_the_duty(api, live_plan, workflow,
                                                                                  release_manager, admin_user):
    refused = api.post(f"/api/v1/rollouts/{live_plan.pk}/pause", json.dumps({"reason": "canary red"}),
                       content_type="application/json")
    assert refused.status_code == 403 and refused.json()["code"] == "forbidden"
    from governance import services as governance_services

    governance_services.assign_containment(workflow.pk, actor=admin_user, user=release_manager, duty="rollback",
                                           position="backup")
    done = api.post(f"/api/v1/rollouts/{live_plan.pk}/rollback", json.dumps({"reason": "canary red"}),
                    content_type="application/json")
    assert done.status_code == 202 and done.json()["state"] == "scheduled"
    state = api.get(f"/api/v1/rollouts/{live_plan.pk}").json()
    assert [a["kind"] for a in state["open_actions"]] == ["rollback"]


def test_values_beyond_1e15_are_refused_naming_the_field(api, live_plan):
    response = post_samples(api, sample("1e300"))
    assert response.status_code == 422 and response.json()["errors"][0]["field"] == "samples.0.value"
    assert not Signal.objects.exists()
