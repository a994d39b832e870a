"""Containment timing in real Celery worker and beat processes: a signal outage is told to the
owners by the check armed for it (beat's evaluation is made too slow to help), and a tier-2
override window's rollback runs at its deadline even while the worker's queue is backed up."""

from __future__ import annotations

import time
from datetime import timedelta
from decimal import Decimal
from email import message_from_bytes

import pytest
import redis
from django.conf import settings

from approvals import services as approval_services
from approvals.models import ApprovalRequest, Delivery
from core import clock
from rollouts import plans, signals
from rollouts.models import Metric, RolloutAction, RolloutPlan, SignalLoss
from tests.rollouts.conftest import WORKER_ENV, metric
from tests.rollouts.test_end_to_end import set_tier
from tests.support.celery_processes import celery_processes

pytestmark = pytest.mark.django_db(transaction=True)

# Beat evaluates every 5 minutes here: only the armed check can notice an outage in time.
ENV = {**WORKER_ENV, "ROLLOUT_EVALUATION_SECONDS": "300",
       "EMAIL_BACKEND": "django.core.mail.backends.filebased.EmailBackend"}


@pytest.fixture(scope="module")
def celery(django_db_setup, django_db_blocker):
    env = {**ENV, "ROLLOUT_WEBHOOK_SECRET": settings.ROLLOUT_WEBHOOK_SECRET}
    with django_db_blocker.unblock(), celery_processes(sweep_seconds=0.5, env=env) as procs:
        yield procs


def five_second_triggers() -> list[dict]:
    base = {"operator": "gt", "sustained_for": timedelta(seconds=5), "min_samples": 3, "severity": "critical"}
    return [{"metric": metric("latency_p95_ms"), "threshold": Decimal("800"), **base},
            {"metric": metric("error_rate"), "threshold": Decimal("0.05"), **base}]


def send(plan: RolloutPlan, **values: float) -> None:
    ids = dict(Metric.objects.filter(slug__in=values).values_list("slug", "pk"))
    now = clock.now()
    signals.ingest_signals(plan, [(ids[m], 0, "internal_team:support-ops", now, v) for m, v in values.items()])


def test_an_outage_is_told_to_the_owners_within_no_data_after_plus_10_s(celery, workflow, make_plan, owner,
                                                                         release_manager, capsys):
    set_tier(workflow, 3)
    plan = plans.start_rollout(make_plan(triggers=five_second_triggers()).pk, actor=release_manager)
    for _ in range(16):  # 8 s of healthy samples, then the signal stops
        send(plan, latency_p95_ms=700, error_rate=0.01)
        time.sleep(0.5)
    stopped = clock.now()
    email = celery.wait_for(lambda: Delivery.objects.filter(notice__workflow=workflow, notice__event="signals_lost",
                                                            channel="email", status="sent").first(), 40,
                            "the owners were emailed that the signals are lost")
    told = (email.sent_at - stopped).total_seconds()  # through the outbox: noticed, then delivered
    no_data_after = 10.0
    assert told <= no_data_after + 10, told
    loss = SignalLoss.objects.get(plan=plan, pk=email.notice.subject_id)
    assert loss.notified == 1 and RolloutPlan.objects.get(pk=plan.pk).state == "paused"
    assert "approvals.tasks.deliver_notice" in celery.log()
    assert "rollouts.tasks.check_signals" in celery.log()  # the armed check, not beat, noticed it
    # The file backend writes every message a connection sends into one file, each followed by a rule.
    mail = [message_from_bytes(part.strip()) for p in (celery.workdir / "var" / "mail").glob("*")
            for part in p.read_bytes().split(b"\n" + b"-" * 79 + b"\n") if part.strip()]
    assert any("signals lost" in (m["Subject"] or "") and m["To"] == "olivia@example.com" for m in mail)
    with capsys.disabled():
        print(f"\n[signals lost] last sample → notice opened {(loss.notified_at - stopped).total_seconds():.2f} s, "
              f"owners emailed {told:.2f} s (no_data_after {no_data_after:g} s)")


def test_a_tier_2_override_window_rolls_back_within_2_s_of_its_deadline_behind_a_busy_queue(
        celery, workflow, make_plan, owner, release_manager, admin_user, capsys):
    set_tier(workflow, 2)
    approval_services.define_policy(actor=admin_user, workflow=workflow, mode="override_window",
                                    levels=[{"groups": ["containment_owner"], "timeout_seconds": 4}])
    plan = plans.start_rollout(make_plan(triggers=five_second_triggers()).pk, actor=release_manager)
    for _ in range(4):
        send(plan, latency_p95_ms=950, error_rate=0.01)
        time.sleep(0.3)
    action = celery.wait_for(lambda: RolloutAction.objects.filter(plan=plan, kind="rollback").first(), 15,
                             "the evaluation opened an override window")
    time.sleep(0.5)  # the deadline's message is held by the worker
    from rollouts import tasks

    for _ in range(400):  # a backlog of evaluations in front of anything queued from now on
        tasks.evaluate_plan.apply_async((plan.pk,))
    broker = redis.Redis.from_url(settings.CELERY_BROKER_URL)
    celery.wait_for(lambda: RolloutPlan.objects.get(pk=plan.pk).state == "rolled_back", 30,
                    "the override window ran out and the plan rolled back")
    waiting = broker.llen("celery")
    action.refresh_from_db()
    request = ApprovalRequest.objects.get(pk=action.approval_request_id)
    late = (action.closed_at - request.due_at).total_seconds()
    assert request.state == "auto_approved" and action.state == "succeeded"
    assert late <= 2.0, late
    assert waiting > 0  # the rollback did not wait for the queue in front of it
    with capsys.disabled():
        print(f"\n[tier 2] override window deadline → rollback executed: {late:.2f} s "
              f"({waiting} messages still queued)")
