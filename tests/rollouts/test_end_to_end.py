"""End to end with real Celery worker and beat processes: tiers 1, 2 and 3 (signals posted to the
API, the debounced evaluation, approval timers and outcome handlers, the executor, the route), a
webhook plan leaving its fallback through the worker, and TMR-03 (the worker is SIGKILLed while
its webhook rollback is in flight; a new worker finishes it: the receiver sees one effect per
idempotency key, and every attempt is recorded)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from datetime import time as clock_time
from datetime import timedelta

import pytest
from django.conf import settings
from django.test import Client

from approvals import services as approval_services
from approvals.models import ApprovalRequest
from core import clock
from rollouts import containment, plans
from rollouts.models import ActionAttempt, ActionReview, RolloutAction, RolloutPlan
from tests.rollouts.conftest import WORKER_ENV
from tests.rollouts.receiver import running_receiver
from tests.support.celery_processes import ROOT, wait_until

pytestmark = pytest.mark.django_db(transaction=True)
LEASE, SWEEP = float(WORKER_ENV["ROLLOUT_EXECUTOR_LEASE_SECONDS"]), float(WORKER_ENV["ROLLOUT_SWEEP_SECONDS"])

# `celery`: the module's worker and beat (tests/rollouts/conftest.py).


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
    samples = [{"metric": "latency_p95_ms", "value": v,
                "observed_at": (now - timedelta(seconds=10 * (3 - i))).isoformat(),
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
    assert ApprovalRequest.objects.get(rollout_actions=action).mode == "override_window"
    celery.wait_for(lambda: plan_state(live_plan) == "rolled_back", 20, "the window ran out and the plan rolled back")
    elapsed = time.monotonic() - posted
    assert ApprovalRequest.objects.get(rollout_actions=action).state == "auto_approved"
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
    request = ApprovalRequest.objects.get(rollout_actions=action)
    assert request.mode == "gate" and request.state == "pending"
    assert plan_state(live_plan) == "active"  # nothing happens without the approval
    approval_services.record_decision(request.pk, actor=owner, verdict="approve")
    celery.wait_for(lambda: plan_state(live_plan) == "rolled_back", 15, "the approved rollback ran")


@pytest.fixture
def receiver():
    with running_receiver(hold_first=True) as running:
        yield running


@pytest.fixture
def answering_receiver():
    with running_receiver() as running:
        yield running


def test_a_webhook_plan_leaves_its_fallback_in_the_worker_once_the_receiver_answered(
        celery, make_plan, owner, release_manager, answering_receiver):
    plan = plans.start_rollout(make_plan(executor="webhook", webhook_url=answering_receiver.url).pk,
                               actor=release_manager)
    containment.engage_fallback(plan.pk, actor=owner, reason="answers are slow")
    celery.wait_for(lambda: plan_state(plan) == "fallback", 15, "the worker engaged the fallback")
    answering_receiver.failures = [503]
    action = containment.resume_rollout(plan.pk, actor=owner, reason="latency back to normal")
    assert plan_state(plan) == "fallback"
    celery.wait_for(lambda: plan_state(plan) == "active", 20, "the worker's retry was answered and the plan left")
    action.refresh_from_db()
    assert action.state == "succeeded"
    assert list(action.attempt_log.order_by("number").values_list("outcome", flat=True)) == ["retryable_error", "ok"]
    assert answering_receiver.effects[action.idempotency_key] == 1
    assert [r["body"]["event"] for r in answering_receiver.requests] == [
        "rollout.fallback", "rollout.resume", "rollout.resume"]


def start_worker(env: dict[str, str], log) -> subprocess.Popen:
    with open(log, "ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "config", "worker", "--loglevel", "INFO", "--pool", "prefork",
             "--concurrency", "2", "--without-gossip", "--without-mingle", "--without-heartbeat",
             "--hostname", f"restarted-{os.getpid()}@%h"],
            cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)


def test_tmr03_a_rollback_whose_worker_is_killed_mid_request_completes_once(celery, make_plan, owner,
                                                                              release_manager, receiver, capsys):
    plan = make_plan(executor="webhook", webhook_url=receiver.url)
    plan = plans.start_rollout(plan.pk, actor=release_manager)
    action = containment.roll_back(plan.pk, actor=owner, reason="p95 doubled after the release")
    wait_until(lambda: receiver.requests, 20, "the worker's webhook request reached the receiver")
    os.killpg(celery.worker.pid, signal.SIGKILL)  # mid-request: the answer never reaches it
    celery.worker.wait(timeout=10)
    killed = time.monotonic()
    receiver.release.set()
    log = celery.workdir / "worker-restarted.log"
    celery.worker = start_worker(celery.env, log)
    wait_until(lambda: log.exists() and " ready." in log.read_text(errors="replace"), 60,
               "the new worker is ready")
    restarted = time.monotonic()
    wait_until(lambda: RolloutPlan.objects.get(pk=plan.pk).state == "rolled_back", 30,
               "the restarted worker finished the rollback")
    done = time.monotonic()

    action.refresh_from_db()
    attempts = list(action.attempt_log.order_by("number").values_list("outcome", flat=True))
    assert action.state == RolloutAction.State.SUCCEEDED
    assert attempts == [ActionAttempt.Outcome.INTERRUPTED, ActionAttempt.Outcome.OK]
    assert receiver.effects == {action.idempotency_key: 1}  # one effect per key
    assert receiver.keys() == {action.idempotency_key: 2}  # both attempts sent the same key
    assert all(r["signed"] for r in receiver.requests)
    assert receiver.requests[0]["body"] == receiver.requests[1]["body"]
    # Bounded by the lease and the sweep interval (plus a loaded machine's slack), not by the
    # broker's visibility timeout (2 h), after which the lost message itself would come back.
    assert done - restarted < LEASE + SWEEP + 15 < settings.CELERY_BROKER_VISIBILITY_TIMEOUT
    with capsys.disabled():
        print(f"\n[TMR-03] kill → rolled back {done - killed:.2f} s (new worker ready → done {done - restarted:.2f} s; "
              f"lease {LEASE} s, sweep {SWEEP} s); attempts {attempts}; distinct effects {len(receiver.effects)}")
