"""Tiers 1, 2 and 3 end to end with real Celery worker and beat processes: signals posted to the
API, the debounced evaluation, approval timers and outcome handlers, the executor, the route."""

from __future__ import annotations

import json
import time
from datetime import time as clock_time
from datetime import timedelta

import pytest
from django.test import Client

from approvals import services as approval_services
from approvals.models import ApprovalRequest
from governance import clock
from rollouts.models import ActionReview, RolloutAction, RolloutPlan
from tests.support.celery_processes import make_celery_fixture

pytestmark = pytest.mark.django_db(transaction=True)

WORKER_ENV = {
    "ROLLOUT_EVALUATION_DEBOUNCE_SECONDS": "0.2",
    "ROLLOUT_EVALUATION_SECONDS": "2",
    "ROLLOUT_SWEEP_SECONDS": "0.5",
    "ROLLOUT_EXECUTOR_STALL_SECONDS": "2",
}
celery = pytest.fixture(scope="module")(make_celery_fixture(sweep_seconds=0.5, env=WORKER_ENV))


@pytest.fixture
def api(agent_token) -> Client:
    return Client(headers={"Authorization": f"Bearer {agent_token}"})


def set_tier(workflow, tier: int) -> None:
    workflow.autonomy_tier, workflow.off_hours_tier = tier, None
    workflow.business_start, workflow.business_end = clock_time(0), clock_time(23, 59)
    workflow.save(update_fields=["autonomy_tier", "off_hours_tier", "business_start", "business_end"])


def override_window(workflow, admin_user, seconds: int) -> None:
    approval_services.define_policy(actor=admin_user, workflow=workflow, mode="override_window",
                                    levels=[{"groups": ["containment_owner"], "timeout_seconds": seconds}])


def breach(api: Client) -> float:
    """Post the seeds' latency rise (four samples over 800 ms in the last 40 s); returns when."""
    now = clock.now()
    samples = [{"metric": "latency_p95_ms", "value": v, "observed_at": (now - timedelta(seconds=10 * (3 - i))).isoformat(),
                "segment": "internal_team:support-ops"} for i, v in enumerate((808, 861, 890, 909))]
    posted = time.monotonic()
    response = api.post("/api/v1/signals", json.dumps({"workflow": "refund-agent", "samples": samples}),
                        content_type="application/json")
    assert response.status_code == 200, response.content
    return posted


def plan_state(plan: RolloutPlan) -> str:
    return RolloutPlan.objects.values_list("state", flat=True).get(pk=plan.pk)


def route_version(api: Client) -> str:
    return api.get("/api/v1/route", {"workflow": "refund-agent", "segment_kind": "internal_team",
                                     "segment_value": "support-ops"}).json()["version"]


def proposal(plan: RolloutPlan, celery) -> RolloutAction:
    return celery.wait_for(lambda: RolloutAction.objects.filter(plan=plan, kind="rollback").first(), 15,
                           "the evaluation proposed a rollback")


def test_tier_1_rolls_back_in_the_worker_and_the_agents_next_call_gets_the_stable_version(
        celery, workflow, live_plan, api, capsys):
    set_tier(workflow, 1)
    assert route_version(api) == "prompt-v2"
    posted = breach(api)
    celery.wait_for(lambda: plan_state(live_plan) == "rolled_back", 20, "the plan rolled back")
    elapsed = time.monotonic() - posted
    assert route_version(api) == "prompt-v1"  # the first call after the rollback
    action = RolloutAction.objects.get(plan=live_plan, kind="rollback")
    assert (action.state, action.handling, action.attempts) == ("succeeded", "execute", 1)
    assert ActionReview.objects.get(action=action).is_pending
    with capsys.disabled():
        print(f"\n[tier 1] breaching batch posted → rolled back: {elapsed:.2f} s")


def test_tier_2_silence_proceeds_at_the_deadline(celery, workflow, live_plan, api, admin_user, capsys):
    set_tier(workflow, 2)
    override_window(workflow, admin_user, 2)
    posted = breach(api)
    action = proposal(live_plan, celery)
    assert ApprovalRequest.objects.get(pk=action.approval_request_id).mode == "override_window"
    celery.wait_for(lambda: plan_state(live_plan) == "rolled_back", 20, "the window ran out and the plan rolled back")
    elapsed = time.monotonic() - posted
    assert ApprovalRequest.objects.get(pk=action.approval_request_id).state == "auto_approved"
    assert ActionReview.objects.filter(action=action).exists()
    with capsys.disabled():
        print(f"\n[tier 2] breaching batch posted → rolled back after a 2 s window: {elapsed:.2f} s")


def test_tier_2_override_cancels_and_nothing_rolls_back(celery, workflow, live_plan, api, admin_user, owner):
    set_tier(workflow, 2)
    override_window(workflow, admin_user, 60)
    breach(api)
    action = proposal(live_plan, celery)
    approval_services.record_decision(action.approval_request_id, actor=owner, verdict="override",
                                      justification="expected: the migration changes query plans",
                                      reason="known_change")
    celery.wait_for(lambda: RolloutAction.objects.get(pk=action.pk).state == "cancelled", 15,
                    "the outcome handler cancelled the rollback")
    assert plan_state(live_plan) == "active"
    assert route_version(api) == "prompt-v2"


def test_tier_2_approve_proceeds_at_once(celery, workflow, live_plan, api, admin_user, owner):
    set_tier(workflow, 2)
    override_window(workflow, admin_user, 60)
    breach(api)
    action = proposal(live_plan, celery)
    approval_services.record_decision(action.approval_request_id, actor=owner, verdict="approve")
    celery.wait_for(lambda: plan_state(live_plan) == "rolled_back", 15, "the approved rollback ran")
    assert not ActionReview.objects.exists()  # a person approved it before it ran


def test_tier_3_waits_for_the_approval_then_executes(celery, workflow, live_plan, api, owner):
    set_tier(workflow, 3)
    breach(api)
    action = proposal(live_plan, celery)
    request = ApprovalRequest.objects.get(pk=action.approval_request_id)
    assert request.mode == "gate" and request.state == "pending"
    assert plan_state(live_plan) == "active"  # nothing happens without the approval
    approval_services.record_decision(request.pk, actor=owner, verdict="approve")
    celery.wait_for(lambda: plan_state(live_plan) == "rolled_back", 15, "the approved rollback ran")
