"""The rollouts demo story: seeded through the services, idempotent."""

from __future__ import annotations

import pytest

from configuration import demo as configuration_demo
from core import clock
from governance import demo as governance_demo
from rollouts import demo, selectors
from rollouts.models import RolloutPlan

pytestmark = pytest.mark.django_db


def test_the_demo_tells_the_2am_story_twice_and_seeding_again_changes_nothing():
    governance_demo.seed()
    configuration_demo.seed()
    first = demo.seed()
    assert len(first.created) == 5
    plans = {p.release_version: p for p in RolloutPlan.objects.select_related("workflow")}
    untagged, tagged = plans["billing-v5-migration-r1"], plans["billing-v5-migration"]
    assert untagged.state == "rolled_back"
    assert untagged.actions.get().evidence["trigger"]["metric"] == "latency_p95_ms"
    assert tagged.state == "active"
    latency = next(c for c in selectors.evaluate(tagged, clock.now()).triggers if c.metric == "latency_p95_ms")
    assert latency.status == "holding" and latency.tag["label"] == "expected_latency_increase: 15%"
    ring = plans["reply-prompt-v8"]
    assert (ring.state, ring.current_ring, ring.rings.count()) == ("active", 1, 3)
    assert plans["refund-v12"].state == "fallback" and plans["refund-v12"].active_fallback_mode == "human_review"
    assert plans["disable-classifier-v3"].state == "draft"
    assert demo.seed().created == []
    assert demo.feed() >= 0
