"""Rollout notices go through the approvals' outbox: the same rows, channels, retries, give-up and
sweep; the notification webhook is signed by core.signing and verified by a real local receiver."""

from __future__ import annotations

import base64
import json
from datetime import timedelta

import pytest
import redis
import time_machine
from django.conf import settings

from approvals import notifications as outbox
from approvals import tasks as approval_tasks
from approvals.models import Delivery, Notice
from core import clock, signing
from rollouts import evaluator, executors, notifications
from rollouts.models import RolloutAction
from tests.rollouts.receiver import Receiver
from tests.rollouts.test_tiers import NIGHT, SPIKE, add, open_action, set_tier
from tests.support.celery_processes import purge_broker

pytestmark = pytest.mark.django_db

SECRET = "notification-webhook-secret-" + "n" * 20


@pytest.fixture(autouse=True)
def frozen():
    with time_machine.travel(NIGHT, tick=False) as traveller:
        yield traveller


@pytest.fixture
def receiver(settings):
    hook = Receiver(secret=SECRET).start()
    settings.APPROVALS_WEBHOOK_URL, settings.APPROVALS_WEBHOOK_SECRET = hook.url, SECRET
    yield hook
    hook.stop()


@pytest.fixture
def rollback(workflow, live_plan, owner) -> RolloutAction:
    """A tier-1 rollback that ran without a person: its owners are to be told."""
    set_tier(workflow, 1)
    add(live_plan, "latency_p95_ms", *SPIKE)
    evaluator.evaluate_plan(live_plan.pk)
    executors.run(open_action(live_plan).pk)
    return RolloutAction.objects.get(kind="rollback", state="succeeded")


def notice_of(action: RolloutAction) -> Notice:
    return Notice.objects.get(event=Notice.Event.AUTONOMOUS_ACTION, subject_id=str(action.pk))


def test_a_rollout_notice_reaches_the_owners_and_the_signed_webhook(rollback, receiver, mailoutbox):
    assert notifications.notify_autonomous_action(rollback.pk) == 1
    notice = notice_of(rollback)
    assert (notice.source, notice.request_id, notice.workflow.slug, notice.subject_type) == (
        "rollout", None, "refund-agent", "rollouts.rolloutaction")
    assert outbox.deliver(notice.pk) == {"sent": 2, "failed": 0, "skipped": 0}
    [mail] = mailoutbox
    assert mail.to == ["olivia@example.com"]
    assert mail.subject == "[Ringfence] refund-agent: prompt-v2 rolled back automatically"
    [hit] = receiver.requests
    assert hit["signed"] and hit["key"] == f"rollout-notice-{notice.pk}"
    assert hit["body"]["text"].startswith("refund-agent: prompt-v2 rolled back automatically")
    assert hit["body"]["metadata"]["event_type"] == "rollout_autonomous_action"
    assert hit["body"]["metadata"]["event_payload"]["action"] == rollback.pk
    assert Notice.objects.get(pk=notice.pk).delivered_at is not None


def test_a_rollout_notice_that_fails_is_retried_by_the_sweep_then_given_up(rollback, receiver, mailoutbox, frozen):
    receiver.failures = [500] * 10
    notifications.notify_autonomous_action(rollback.pk)
    notice = notice_of(rollback)
    for attempt in range(1, outbox.MAX_ATTEMPTS + 1):
        with pytest.raises(outbox.DeliveryFailed):
            outbox.deliver(notice.pk)
        webhook = Delivery.objects.get(notice=notice, channel="webhook")
        assert (webhook.status, webhook.attempts) == ("failed", attempt) and "500" in webhook.last_error
        assert outbox.stale_notice_ids() == []  # not before RETRY_AFTER
        frozen.shift(outbox.RETRY_AFTER + timedelta(seconds=1))
        if attempt < outbox.MAX_ATTEMPTS:
            assert outbox.stale_notice_ids() == [notice.pk]  # the sweep takes it up again
    assert outbox.stale_notice_ids() == []  # given up: out of attempts
    assert Notice.objects.get(pk=notice.pk).delivered_at is not None
    assert outbox.deliver(notice.pk) == {}
    assert len(receiver.requests) == outbox.MAX_ATTEMPTS and all(r["signed"] for r in receiver.requests)
    assert len(mailoutbox) == 1  # the email went out at the first attempt and never again
    assert Delivery.objects.get(notice=notice, channel="email").status == "sent"


def queued_deliveries() -> list[int]:
    """The notice ids of the `deliver_notice` messages waiting in the broker's queue."""
    broker = redis.Redis.from_url(settings.CELERY_BROKER_URL)
    found = []
    for raw in broker.lrange("celery", 0, -1):
        message = json.loads(raw)
        if message["headers"]["task"] == "approvals.tasks.deliver_notice":
            args, _kwargs, _embed = json.loads(base64.b64decode(message["body"]))
            found.append(args[0])
    return found


def test_the_worker_that_noticed_delivers_after_commit_not_behind_the_queue(
        rollback, mailoutbox, django_capture_on_commit_callbacks):
    purge_broker()
    with django_capture_on_commit_callbacks(execute=True):
        assert notifications.notify_autonomous_action(rollback.pk) == 1
        assert mailoutbox == []  # nothing leaves before the commit
    [mail] = mailoutbox
    assert mail.to == ["olivia@example.com"]
    assert queued_deliveries() == []
    assert Notice.objects.get(pk=notice_of(rollback).pk).delivered_at is not None


def test_a_lost_delivery_is_republished_by_the_sweep(rollback, mailoutbox, frozen):
    """The test's transaction never commits, so the delivery after commit never runs: as if the
    worker died at the commit (or, for a published delivery, its message was lost)."""
    purge_broker()
    notifications.notify_autonomous_action(rollback.pk)
    notice = notice_of(rollback)
    assert queued_deliveries() == []
    approval_tasks.sweep_due()
    assert queued_deliveries() == []  # a minute's grace for the message and the worker
    frozen.shift(outbox.RETRY_AFTER + timedelta(seconds=1))
    assert approval_tasks.sweep_due()["deliveries"] == 1
    [notice_id] = queued_deliveries()
    purge_broker()
    assert notice_id == notice.pk
    approval_tasks.deliver_notice(notice_id)  # what the worker does with the message
    [mail] = mailoutbox
    assert mail.subject == "[Ringfence] refund-agent: prompt-v2 rolled back automatically"
    assert outbox.stale_notice_ids() == []


@pytest.mark.django_db(transaction=True)
def test_a_rollout_notice_is_opened_in_the_callers_transaction_only():
    with pytest.raises(RuntimeError, match="inside the transaction"):
        outbox.enqueue(source="rollout", event="signals_lost", subject=("rollouts.signalloss", "1"),
                       workflow=None, recipients=[], title="t", body="b")


def test_a_body_signed_by_the_helper_verifies_and_nothing_else_does():
    body = b'{"event":"rollout.rollback"}'
    now = clock.now().timestamp()
    headers = signing.sign(SECRET, body)
    assert headers[signing.SIGNATURE_HEADER].startswith("v1=") and int(headers[signing.TIMESTAMP_HEADER]) == int(now)
    assert signing.verify(SECRET, body, headers)
    assert signing.verify(SECRET, body, {k.lower(): v for k, v in headers.items()})  # header names: any case
    assert not signing.verify("another-secret", body, headers)
    assert not signing.verify(SECRET, body + b" ", headers)
    assert not signing.verify(SECRET, body, {**headers, signing.TIMESTAMP_HEADER: str(int(now) - 1)})
    assert not signing.verify(SECRET, body, headers, now=now + signing.TOLERANCE_SECONDS + 1)  # a replay
    assert signing.verify(SECRET, body, headers, now=now + signing.TOLERANCE_SECONDS + 1, tolerance=None)
