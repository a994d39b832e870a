"""The webhook executor against a real local receiver: signature, idempotency key, retries with
backoff, permanent failures; each attempt recorded through the service."""

from __future__ import annotations

from datetime import timedelta

import pytest
import time_machine
from django.conf import settings

from governance import clock
from governance.models import AuditEvent
from rollouts import executors, services
from rollouts.models import RolloutPlan
from tests.rollouts.receiver import Receiver

pytestmark = pytest.mark.django_db


@pytest.fixture
def receiver():
    running = Receiver(secret=settings.ROLLOUT_WEBHOOK_SECRET).start()
    yield running
    running.stop()


@pytest.fixture
def webhook_plan(make_plan, owner, release_manager, receiver) -> RolloutPlan:
    plan = make_plan(executor="webhook", webhook_url=receiver.url)
    return services.start_rollout(plan.pk, actor=release_manager)


def test_a_rollback_is_posted_signed_with_its_idempotency_key(webhook_plan, owner, receiver):
    action = services.roll_back(webhook_plan.pk, actor=owner, reason="p95 doubled")
    result = executors.run(action.pk)
    assert result.action.state == "succeeded" and result.retry_in is None
    request = receiver.requests[0]
    assert request["signed"] and request["key"] == action.idempotency_key
    assert request["body"]["event"] == "rollout.rollback" and request["body"]["stable_version"] == "prompt-v1"
    webhook_plan.refresh_from_db()
    assert webhook_plan.state == "rolled_back"


def test_a_wrong_secret_is_refused_by_the_receiver_and_the_action_fails(webhook_plan, owner, receiver):
    receiver.secret = "another-secret-" + "x" * 40
    action = services.roll_back(webhook_plan.pk, actor=owner, reason="p95 doubled")
    result = executors.run(action.pk)
    assert result.action.state == "failed"
    assert AuditEvent.objects.filter(action="rollout.action_failed").get().reason.startswith("HTTP 401")
    webhook_plan.refresh_from_db()
    assert webhook_plan.state == "active"


def test_server_errors_are_retried_with_backoff_then_succeed_once(webhook_plan, owner, receiver):
    receiver.failures = [503, 502]
    action = services.roll_back(webhook_plan.pk, actor=owner, reason="p95 doubled")
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
    plan = services.start_rollout(make_plan(executor="webhook", webhook_url="http://127.0.0.1:9/down").pk,
                                  actor=release_manager)
    action = services.roll_back(plan.pk, actor=owner, reason="p95 doubled")
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
    action = services.roll_back(live_plan.pk, actor=owner, reason="p95 doubled")
    assert services.sweep_actions() == 0  # just scheduled: its message is on its way
    with time_machine.travel(clock.now() + timedelta(seconds=settings.ROLLOUT_EXECUTOR_STALL_SECONDS + 1)):
        with django_capture_on_commit_callbacks() as callbacks:
            assert services.sweep_actions() == 1
    assert len(callbacks) == 1
    executors.run(action.pk)
    live_plan.refresh_from_db()
    assert live_plan.state == "rolled_back"
