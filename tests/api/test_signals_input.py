"""IN-02: non-finite and extreme numbers, oversized batches, duplicates and unknown metrics."""

from __future__ import annotations

import datetime as dt
import json

import pytest

from rollouts.models import RolloutAction, Signal
from tests.api.conftest import assert_problem

pytestmark = pytest.mark.django_db

NOW = "2030-01-08T10:00:00+00:00"


def post_raw(api, raw: bytes | str):
    return api.post("/api/v1/signals", raw, content_type="application/json")


def batch(*samples: dict) -> dict:
    return {"workflow": "refund-agent", "samples": list(samples)}


def sample(value="0.9", metric="quality_score", at=NOW) -> str:
    return f'{{"metric": "{metric}", "value": {value}, "observed_at": "{at}", "segment": "internal_team:support-ops"}}'


@pytest.fixture(autouse=True)
def _now(live_plan):
    import time_machine

    with time_machine.travel(dt.datetime(2030, 1, 8, 10, 1, tzinfo=dt.UTC), tick=False):
        yield


@pytest.mark.parametrize("literal", ["NaN", "Infinity", "-Infinity", "1e309", "-1e309"])
def test_non_finite_values_are_refused_naming_the_field(api, literal):
    raw = f'{{"workflow": "refund-agent", "samples": [{sample()}, {sample(literal, at="2030-01-08T10:00:01+00:00")}]}}'
    body = assert_problem(post_raw(api, raw), 422, "non_finite_number")
    assert [e["field"] for e in body["errors"]] == ["samples.1.value"]
    assert Signal.objects.count() == 0 and RolloutAction.objects.count() == 0


def test_negative_zero_is_stored_as_zero(api):
    response = post_raw(api, f'{{"workflow": "refund-agent", "samples": [{sample("-0.0", metric="error_rate")}]}}')
    assert response.status_code == 200 and response.json()["stored"] == 1
    assert Signal.objects.get().value == 0


def test_a_batch_over_10000_samples_is_refused_whole(api):
    samples = [{"metric": "quality_score", "value": 0.9, "segment": "internal_team:support-ops",
                "observed_at": (dt.datetime(2030, 1, 8, 9, 0, tzinfo=dt.UTC) + dt.timedelta(milliseconds=i)).isoformat()}
               for i in range(10_001)]
    response = api.post("/api/v1/signals", json.dumps(batch(*samples)), content_type="application/json")
    assert response.status_code in (413, 422)
    body = assert_problem(response, response.status_code)
    assert "samples" in [e["field"] for e in body["errors"]]
    assert Signal.objects.count() == 0


def test_duplicate_timestamps_keep_the_first_value_and_are_counted(api):
    raw = f'{{"workflow": "refund-agent", "samples": [{sample("0.9")}, {sample("0.1")}]}}'
    body = post_raw(api, raw).json()
    assert (body["received"], body["stored"], body["duplicates"]) == (2, 1, 1)
    assert post_raw(api, raw).json()["stored"] == 0
    assert [s.value for s in Signal.objects.all()] == [0.9]


def test_unknown_metric_slug_is_refused_and_nothing_is_stored(api):
    raw = f'{{"workflow": "refund-agent", "samples": [{sample()}, {sample(metric="made_up_metric")}]}}'
    body = assert_problem(post_raw(api, raw), 422)
    assert "samples.1.metric" in [e["field"] for e in body["errors"]]
    assert Signal.objects.count() == 0 and RolloutAction.objects.count() == 0
