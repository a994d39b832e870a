"""A rollout story a manager reads on the dashboards, told through the services.

refund-agent (tier 1, in the manager's scope): prompt-v2 starts at ring 0 with healthy signals,
ring 1 opens, a tagged latency window passes, then latency breaches its trigger and the release
rolls back at once (an autonomous action with a post-facto review waiting). Its approval queue has
a pending request, an escalated one, an approved one and an overridden rollback (reason: noise).
account-disable-agent (outside the manager's scope) has its own live plan and signals.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from datetime import timedelta
from decimal import Decimal

import pytest
import time_machine
from django.utils import timezone

from approvals import services as approvals
from governance import services as governance
from governance.models import ContainmentAssignment
from governance.permissions import Role
from rollouts import containment, evaluator, executors, plans, signals, tags
from rollouts.models import ActionReview, Metric, RolloutAction, RolloutPlan
from tests import factories
from tests.rollouts.conftest import plan_spec

DUTIES = [d.value for d in ContainmentAssignment.Duty]


@pytest.fixture(autouse=True)
def _fast_password_hashing(settings):
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


@pytest.fixture
def manager(workflow):
    user = factories.make_user("maya", role=Role.MANAGER)
    factories.scope(user, workflow)
    return user


@dataclass
class Story:
    base: object
    plan: RolloutPlan
    other_plan: RolloutPlan
    rollback: RolloutAction
    review: ActionReview
    first_breach: object
    latency_samples: int


def add(plan: RolloutPlan, metric: str, start, values: list[float], every: int = 30, ring: int = 0) -> None:
    metric_id = Metric.objects.get(slug=metric).pk
    rows = [(metric_id, ring, "", start + timedelta(seconds=every * i), v) for i, v in enumerate(values)]
    signals.ingest_signals(plan, rows)


def tell(workflow, other_workflow, admin_user, containment_owner, approver) -> Story:
    base = timezone.now().replace(microsecond=0) - timedelta(hours=2)
    at = lambda minutes: time_machine.travel(base + timedelta(minutes=minutes), tick=False)  # noqa: E731
    rhea = factories.make_user("rhea", role=Role.RELEASE_MANAGER)
    for wf in (workflow, other_workflow):
        factories.scope(rhea, wf)
        governance.update_workflow(wf.pk, actor=admin_user, autonomy_tier=1, off_hours_tier=None)
        for duty in DUTIES:
            governance.assign_containment(wf.pk, actor=admin_user, user=containment_owner, duty=duty)
    factories.scope(containment_owner, other_workflow)
    with at(0):
        plan = plans.create_plan(actor=rhea, workflow=workflow, **plan_spec())
        plan = plans.start_rollout(plan.pk, actor=rhea)
        other = plans.create_plan(actor=rhea, workflow=other_workflow, **plan_spec(release_version="disable-v7"))
        other = plans.start_rollout(other.pk, actor=rhea)
    with at(12):
        for p in (plan, other):
            add(p, "quality_score", base, [0.9] * 20)
            add(p, "cost_per_task", base, [0.03] * 20)
            add(p, "error_rate", base, [0.01] * 20)
            add(p, "latency_p95_ms", base, [700 + i for i in range(20)])
    with at(15):
        containment.expand_rollout(plan.pk, actor=containment_owner, reason="ring 0 healthy for 10 min")
    with at(18):
        tags.create_context_tag(actor=rhea, workflow=workflow, plan=plan, kind="expected_latency_increase",
                                expected_change_percent=Decimal("10"), starts_at=base + timedelta(minutes=20),
                                ends_at=base + timedelta(minutes=30),
                                reason="cache warm-up after the index rebuild")
    spike_start = base + timedelta(minutes=40)
    with at(41.5):
        add(plan, "latency_p95_ms", base + timedelta(minutes=16), [720] * 47, ring=1)  # up to 39 min 30 s
        add(plan, "latency_p95_ms", spike_start, [905, 930, 950, 990], ring=1)
        evaluator.evaluate_plan(plan.pk)
        rollback = RolloutAction.objects.get(plan=plan, kind="rollback")
        executors.run(rollback.pk)
    rollback.refresh_from_db()
    plan.refresh_from_db()
    other.refresh_from_db()
    with at(50):
        approvals.create_request(workflow=workflow, kind="agent_action", action="refund_customer",
                                 parameters={"order": 1}, requester="system:refunds")
    with at(60):
        escalated = approvals.create_request(workflow=workflow, kind="agent_action", action="refund_customer",
                                             parameters={"order": 2}, requester="system:refunds")
    with time_machine.travel(escalated.due_at + timedelta(seconds=1), tick=False):
        approvals.handle_due(escalated.pk)
    with at(80):
        approved = approvals.create_request(workflow=workflow, kind="agent_action", action="refund_customer",
                                            parameters={"order": 3}, requester="system:refunds")
    with at(83):
        approvals.record_decision(approved.pk, actor=approver, verdict="approve")
    with at(90):
        window = approvals.create_request(workflow=workflow, kind="rollback", action="rollout.rollback", parameters={},
                                          requester="system:rollouts", mode="override_window")
    with at(91):
        approvals.record_decision(window.pk, actor=containment_owner, verdict="override", reason="noise",
                                  justification="latency blip from a retried batch, not the release")
    approvals.create_request(workflow=workflow, kind="agent_action", action="refund_customer",  # due in 10 min
                             parameters={"order": 4}, requester="system:refunds")
    return Story(base, plan, other, rollback, ActionReview.objects.get(action=rollback), spike_start, 20 + 47 + 4)


@pytest.fixture
def story(workflow, other_workflow, admin_user, containment_owner, approver) -> Story:
    return tell(workflow, other_workflow, admin_user, containment_owner, approver)


def figures(page: str) -> dict[str, dict]:
    """The figures a page hands to plotly.js, by chart id."""
    found = re.findall(r'<script type="application/json" id="chart-([\w-]+)-data">(.*?)</script>', page, re.S)
    return {key: json.loads(text) for key, text in found}


def table(page: str, title: str) -> list[list[str]]:
    """The rows of a chart's numbers table, as the page shows them."""
    body = re.search(rf'aria-label="{re.escape(title)} \(numbers\)">.*?<tbody>(.*?)</tbody>', page, re.S).group(1)
    return [[re.sub(r"<[^>]+>", "", cell).strip() for cell in re.findall(r"<td[^>]*>(.*?)</td>", row, re.S)]
            for row in re.findall(r"<tr>(.*?)</tr>", body, re.S) if 'class="empty"' not in row]
