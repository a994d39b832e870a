"""Rollout fixtures: a release manager, a containment owner holding every duty, a scoped
containment owner holding none, an agent with a token, and a plan that passes readiness."""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal

import pytest
from django.conf import settings
from django.contrib.auth.models import User

from governance import services as governance_services
from governance.models import ContainmentAssignment, Workflow
from governance.permissions import Role
from rollouts import plans
from rollouts.models import Metric, RolloutPlan
from tests import factories
from tests.support.celery_processes import celery_processes

DUTIES = [d.value for d in ContainmentAssignment.Duty]


@pytest.fixture
def release_manager(workflow) -> User:
    user = factories.make_user("rhea", role=Role.RELEASE_MANAGER, first_name="Rhea")
    factories.scope(user, workflow)
    return user


@pytest.fixture
def owner(workflow, containment_owner, admin_user) -> User:
    """Olivia owns every containment duty of the workflow."""
    for duty in DUTIES:
        governance_services.assign_containment(workflow.pk, actor=admin_user, user=containment_owner, duty=duty)
    return containment_owner


@pytest.fixture
def bystander(workflow) -> User:
    """Oscar is a containment owner in scope of the workflow, but holds none of its duties."""
    user = factories.make_user("oscar", role=Role.CONTAINMENT_OWNER, first_name="Oscar")
    factories.scope(user, workflow)
    return user


@pytest.fixture
def agent(workflow, release_manager):
    return factories.make_service_account("deploy-bot", owner=release_manager, workflows=[workflow])


@pytest.fixture
def agent_token(agent, admin_user) -> str:
    return governance_services.issue_token(agent.pk, actor=admin_user).raw


def metric(slug: str) -> Metric:
    return Metric.objects.get(slug=slug)


def plan_spec(**overrides) -> dict:
    """Three rings (internal team → partners → 25 % of traffic), quality and cost criteria,
    a critical latency trigger and a warning on errors."""
    spec = {
        "fields": {"name": "Prompt v2", "release_version": "prompt-v2", "stable_version": "prompt-v1",
                   "fallback_mode": "human_review", "executor": "flag"},
        "rings": [
            {"segment_kind": "internal_team", "segment_value": "support-ops", "exposure_percent": 100,
             "min_soak": timedelta(minutes=10)},
            {"segment_kind": "customer_group", "segment_value": "partners", "exposure_percent": 100,
             "min_soak": timedelta(minutes=10), "approval_point": True},
            {"segment_kind": "traffic_slice", "segment_value": "all", "exposure_percent": 25,
             "min_soak": timedelta(minutes=10)},
        ],
        "criteria": [
            {"metric": metric("quality_score"), "operator": "gte", "threshold": Decimal("0.8"),
             "window": timedelta(minutes=10), "min_samples": 5},
            {"metric": metric("cost_per_task"), "operator": "lte", "threshold": Decimal("0.05"),
             "window": timedelta(minutes=10), "min_samples": 5},
        ],
        "triggers": [
            {"metric": metric("latency_p95_ms"), "operator": "gt", "threshold": Decimal("800"),
             "sustained_for": timedelta(minutes=2), "min_samples": 3, "severity": "critical"},
            {"metric": metric("error_rate"), "operator": "gt", "threshold": Decimal("0.05"),
             "sustained_for": timedelta(minutes=2), "min_samples": 3, "severity": "warning"},
        ],
    }
    for key, value in overrides.items():
        if key in spec["fields"] or key in ("webhook_url", "notes"):
            spec["fields"][key] = value
        else:
            spec[key] = value
    return spec


@pytest.fixture
def make_plan(workflow, release_manager):
    def make(*, wf: Workflow | None = None, **overrides) -> RolloutPlan:
        spec = plan_spec(**overrides)
        return plans.create_plan(actor=release_manager, workflow=wf or workflow, **spec)

    return make


@pytest.fixture
def live_plan(make_plan, owner, release_manager) -> RolloutPlan:
    """A plan started at ring 0 (the workflow's containment duties all have an owner)."""
    plan = make_plan()
    return plans.start_rollout(plan.pk, actor=release_manager)


# A real worker and beat for the modules that need them (end to end, browser), on the test database
# and this run's Redis, with short intervals; module scope, so they never outlive their module.
WORKER_ENV = {
    "ROLLOUT_EVALUATION_DEBOUNCE_SECONDS": "0.2",
    "ROLLOUT_EVALUATION_SECONDS": "2",
    "ROLLOUT_SWEEP_SECONDS": "0.5",
    "ROLLOUT_EXECUTOR_STALL_SECONDS": "2",
    "ROLLOUT_WEBHOOK_TIMEOUT_SECONDS": "2",
    "ROLLOUT_EXECUTOR_LEASE_SECONDS": "3",
}


@pytest.fixture(scope="module")
def celery(django_db_setup, django_db_blocker):
    env = {**WORKER_ENV, "ROLLOUT_WEBHOOK_SECRET": settings.ROLLOUT_WEBHOOK_SECRET}
    with django_db_blocker.unblock(), celery_processes(sweep_seconds=0.5, env=env) as procs:
        yield procs
