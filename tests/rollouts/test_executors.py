"""The webhook executor against a real local receiver: signature, idempotency key, retries with
backoff, permanent failures; each attempt recorded through the service."""

from __future__ import annotations

from datetime import timedelta

import pytest
import time_machine
from django.conf import settings
from django.test import Client

from audit.models import AuditEvent
from core import clock
from core.errors import TransitionRefused
from rollouts import containment, execution, executors, plans, selectors
from rollouts.models import RolloutPlan
from tests.rollouts.receiver import running_receiver

pytestmark = pytest.mark.django_db


@pytest.fixture
def receiver():
    with running_receiver() as running:
        yield running


@pytest.fixture
def webhook_plan(make_plan, owner, release_manager, receiver) -> RolloutPlan:
    plan = make_plan(executor="webhook", webhook_url=receiver.url)
    return plans.start_rollout(plan.pk, actor=release_manager)


def test_a_rollback_is_posted_signed_with_its_idempotency_key(webhook_plan, owner, receiver):
    action = containment.roll_back(webhook_plan.pk, actor=owner, reason="p95 doubled")
    result = executors.run(action.pk)
    assert result.action.state == "succeeded" and result.retry_in is None
    request = receiver.requests[0]
    assert request["signed"] and request["key"] == action.idempotency_key
    assert request["body"]["event"] == "rollout.rollback" and request["body"]["stable_version"] == "prompt-v1"
    webhook_plan.refresh_from_db()
    assert webhook_plan.state == "rolled_back"


def test_a_wrong_secret_is_refused_by_the_receiver_and_the_action_fails(webhook_plan, owner, receiver):
    receiver.secret = "another-secret-" + "x" * 40
    action = containment.roll_back(webhook_plan.pk, actor=owner, reason="p95 doubled")
    result = executors.run(action.pk)
    assert result.action.state == "failed"
    assert AuditEvent.objects.filter(action="rollout.action_failed").get().reason.startswith("HTTP 401")
    webhook_plan.refresh_from_db()
    assert webhook_plan.state == "active"


def test_server_errors_are_retried_with_backoff_then_succeed_once(webhook_plan, owner, receiver):
    receiver.failures = [503, 502]
    action = containment.roll_back(webhook_plan.pk, actor=owner, reason="p95 doubled")
    with time_machine.travel(clock.now(), tick=False) as traveller:
        first = executors.run(action.pk)
        assert first.retry_in == settings.ROLLOUT_EXECUTOR_BACKOFF_SECONDS
        assert executors.run(action.pk) is None  # too early: the backoff has not elapsed
        traveller.shift(timedelta(seconds=first.retry_in))
        second = executors.run(action.pk)
        assert second.retry_in == 2 * settings.ROLLOUT_EXECUTOR_BACKOFF_SECONDS
        traveller.shift(timedelta(seconds=second.retry_in))
        assert executors.run(action.pk).action.state == "succeeded"
    outcomes = list(action.attempt_log.order_by("number").values_list("outcome", "http_status"))
    assert outcomes == [("retryable_error", 503), ("retryable_error", 502), ("ok", 200)]
    assert receiver.effects == {action.idempotency_key: 1}
    assert AuditEvent.objects.filter(action="rollout.action_retry").count() == 2


def test_an_unreachable_receiver_uses_up_the_attempts_and_the_action_fails(make_plan, owner, release_manager):
    plan = plans.start_rollout(make_plan(executor="webhook", webhook_url="http://127.0.0.1:9/down").pk,
                               actor=release_manager)
    action = containment.roll_back(plan.pk, actor=owner, reason="p95 doubled")
    with time_machine.travel(clock.now(), tick=False) as traveller:
        for _ in range(settings.ROLLOUT_EXECUTOR_MAX_ATTEMPTS):
            result = executors.run(action.pk)
            if result.retry_in:
                traveller.shift(timedelta(seconds=result.retry_in))
    action.refresh_from_db()
    assert action.state == "failed" and action.attempts == settings.ROLLOUT_EXECUTOR_MAX_ATTEMPTS
    assert "connection failed" in action.attempt_log.last().detail
    plan.refresh_from_db()
    assert plan.state == "active"  # a failed rollback changes nothing; the page shows it failed


def test_the_sweep_resends_an_action_whose_message_was_lost(live_plan, owner, django_capture_on_commit_callbacks):
    action = containment.roll_back(live_plan.pk, actor=owner, reason="p95 doubled")
    assert execution.sweep_actions() == 0  # just scheduled: its message is on its way
    with time_machine.travel(clock.now() + timedelta(seconds=settings.ROLLOUT_EXECUTOR_STALL_SECONDS + 1)):
        with django_capture_on_commit_callbacks() as callbacks:
            assert execution.sweep_actions() == 1
    assert len(callbacks) == 1
    executors.run(action.pk)
    live_plan.refresh_from_db()
    assert live_plan.state == "rolled_back"


# -- leaving a fallback goes through the executor too ----------------------------------------------

def in_fallback(plan: RolloutPlan, owner) -> RolloutPlan:
    executors.run(containment.engage_fallback(plan.pk, actor=owner, reason="answers are slow").pk)
    plan.refresh_from_db()
    assert plan.state == "fallback"
    return plan


def route_mode(plan: RolloutPlan) -> str:
    return selectors.current_route(plan.workflow, "internal_team", "support-ops")["mode"]


def plan_page(plan: RolloutPlan, user) -> str:
    client = Client()
    client.force_login(user)
    return client.get(plan.get_absolute_url()).content.decode()


def trail(plan: RolloutPlan) -> list[str]:
    return list(AuditEvent.objects.filter(subject_type="rollouts.rolloutplan", subject_id=str(plan.pk))
                .order_by("seq").values_list("action", flat=True))


def test_leaving_a_fallback_is_posted_and_the_plan_is_active_only_once_the_receiver_answered(
        webhook_plan, owner, receiver):
    plan = in_fallback(webhook_plan, owner)
    receiver.failures = [503]
    action = containment.resume_rollout(plan.pk, actor=owner, reason="latency back to normal")
    assert (action.kind, action.state, action.executor) == ("resume", "scheduled", "webhook")
    plan.refresh_from_db()
    assert (plan.state, plan.active_fallback_mode, route_mode(plan)) == ("fallback", "human_review", "human_review")
    page = plan_page(plan, owner)
    assert "Leaving the fallback mode: the webhook executor is telling the receiver" in page
    assert "Leave the fallback mode</button>" not in page
    refusal = pytest.raises(TransitionRefused, containment.resume_rollout, plan.pk, actor=owner).value
    assert (refusal.code, refusal.message) == (
        "conflict", f"Leaving the fallback mode of this rollout is already being executed (action {action.pk}).")

    with time_machine.travel(clock.now(), tick=False) as traveller:
        first = executors.run(action.pk)
        assert first.retry_in == settings.ROLLOUT_EXECUTOR_BACKOFF_SECONDS
        plan.refresh_from_db()
        assert plan.state == "fallback"  # the receiver has not applied it yet
        traveller.shift(timedelta(seconds=first.retry_in))
        assert executors.run(action.pk).action.state == "succeeded"

    body = receiver.requests[-1]["body"]
    assert body["event"] == "rollout.resume" and body["action_id"] == action.pk
    assert body["parameters"] == {"from": "fallback", "fallback_mode": "human_review"}
    assert all(r["signed"] for r in receiver.requests)
    assert receiver.keys()[action.idempotency_key] == 2 and receiver.effects[action.idempotency_key] == 1
    assert list(action.attempt_log.order_by("number").values_list("outcome", "http_status")) == [
        ("retryable_error", 503), ("ok", 200)]
    plan.refresh_from_db()
    assert (plan.state, plan.active_fallback_mode, route_mode(plan)) == ("active", "", "normal")
    assert trail(plan)[-5:] == ["rollout.fallback_engaged", "rollout.fallback_exit_requested",
                                "rollout.action_started", "rollout.action_retry", "rollout.resumed"]
    resumed = AuditEvent.objects.filter(action="rollout.resumed").get()
    assert resumed.data["state_from"] == "fallback" and resumed.data["idempotency_key"] == action.idempotency_key
    assert "Leaving the fallback mode" not in plan_page(plan, owner)


def test_a_failed_exit_leaves_the_plan_in_fallback_with_the_failure_on_the_page_and_in_the_trail(
        webhook_plan, owner, receiver):
    plan = in_fallback(webhook_plan, owner)
    receiver.secret = "another-secret-" + "x" * 40  # the receiver refuses the signature: 401, not retried
    action = containment.resume_rollout(plan.pk, actor=owner, reason="latency back to normal")
    assert executors.run(action.pk).action.state == "failed"
    plan.refresh_from_db()
    assert (plan.state, route_mode(plan)) == ("fallback", "human_review")
    failed = AuditEvent.objects.filter(action="rollout.action_failed").get()
    assert failed.data["kind"] == "resume" and failed.reason.startswith("HTTP 401")
    page = plan_page(plan, owner)
    assert "Leaving the fallback mode failed" in page and "after 1 attempt: HTTP 401" in page
    assert "Leave the fallback mode</button>" in page  # the owner may try again

    receiver.secret = settings.ROLLOUT_WEBHOOK_SECRET
    again = containment.resume_rollout(plan.pk, actor=owner, reason="receiver fixed")
    executors.run(again.pk)
    plan.refresh_from_db()
    assert plan.state == "active" and "Leaving the fallback mode failed" not in plan_page(plan, owner)


def test_a_rollback_while_the_exit_is_pending_wins_and_the_exit_is_cancelled(webhook_plan, owner, receiver):
    plan = in_fallback(webhook_plan, owner)
    leave = containment.resume_rollout(plan.pk, actor=owner, reason="looks fine")
    executors.run(containment.roll_back(plan.pk, actor=owner, reason="it is not fine").pk)
    assert executors.run(leave.pk) is None
    leave.refresh_from_db()
    plan.refresh_from_db()
    assert plan.state == "rolled_back"
    assert leave.state == "cancelled" and leave.result == {"cancelled": "the rollout is rolled back"}
    assert [r["body"]["event"] for r in receiver.requests] == ["rollout.fallback", "rollout.rollback"]


def test_with_the_flag_executor_leaving_a_fallback_is_immediate_and_a_pause_is_never_sent(live_plan, owner):
    plan = in_fallback(live_plan, owner)
    action = containment.resume_rollout(plan.pk, actor=owner)
    plan.refresh_from_db()
    assert (action.state, action.executor, plan.state) == ("succeeded", "none", "active")
    containment.pause_rollout(plan.pk, actor=owner, reason="look")
    assert containment.resume_rollout(plan.pk, actor=owner).executor == "none"


def test_the_api_answers_202_for_an_exit_the_executor_still_runs(webhook_plan, owner):
    plan = in_fallback(webhook_plan, owner)
    client = Client()
    client.force_login(owner)
    response = client.post(f"/api/v1/rollouts/{plan.pk}/resume", {"reason": "latency back to normal"},
                           content_type="application/json")
    assert response.status_code == 202, response.content
    assert (response.json()["state"], response.json()["plan_state"]) == ("scheduled", "fallback")
