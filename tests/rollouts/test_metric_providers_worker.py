"""The task path: beat's `rollouts.tasks.pull_metrics` in a real Celery worker pulls a web provider for a
live plan, the pulled samples schedule the evaluation as pushed ones do, and its trigger proposes a
rollback, with no pusher and no test code between the provider and the proposal."""

from __future__ import annotations

import pytest

from rollouts import providers
from rollouts.models import MetricFetch, RolloutAction, Signal
from tests.rollouts.conftest import WORKER_ENV
from tests.support.celery_processes import celery_processes
from tests.support.json_endpoint import json_endpoint

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.timeout(120)]


def test_beat_pulls_a_metric_in_the_worker_and_its_trigger_proposes_a_rollback(live_plan, admin_user, owner,
                                                                               settings):
    settings.WEBHOOK_ALLOWED_NETWORKS = ["127.0.0.0/8"]
    with json_endpoint() as endpoint:
        endpoint.always = (200, {"p95": 1480.0}, 0.0)  # the release is slow from the start
        providers.set_metric_provider(actor=admin_user, slug="latency_p95_ms", provider={
            "kind": "web", "url": endpoint.url + "/latency?workflow={{ workflow }}&segment={{ segment }}",
            "query": "$.p95", "interval_seconds": 1, "timeout_seconds": 2})
        env = {**WORKER_ENV, "ROLLOUT_WEBHOOK_SECRET": settings.ROLLOUT_WEBHOOK_SECRET,
               "METRIC_PULL_SWEEP_SECONDS": "0.5", "WEBHOOK_ALLOWED_NETWORKS": "127.0.0.0/8"}
        with celery_processes(sweep_seconds=0.5, env=env) as celery:
            rollback = celery.wait_for(
                lambda: RolloutAction.objects.filter(plan=live_plan, kind="rollback").first(), 40,
                "a rollback proposed on pulled samples")
            assert celery.task_results("rollouts.tasks.pull_metrics")
            assert celery.task_results("rollouts.tasks.evaluate_plan")

    assert rollback.origin == "trigger" and rollback.trigger.metric.slug == "latency_p95_ms"
    fetches = MetricFetch.objects.filter(plan=live_plan, metric__slug="latency_p95_ms")
    assert fetches.filter(status="ok", value=1480.0).count() >= rollback.trigger.min_samples
    assert Signal.objects.filter(plan=live_plan, metric__slug="latency_p95_ms", value=1480.0).count() >= 3
    assert endpoint.requests[0]["query"] == {"workflow": ["refund-agent"], "segment": ["support-ops"]}
