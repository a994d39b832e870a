from __future__ import annotations

import json
from datetime import timedelta

import time_machine
from django.urls import reverse
from django.utils import timezone

from approvals import services as approvals
from governance import services as governance
from governance.permissions import Role
from rollouts import evaluator, plans
from rollouts.models import RolloutAction
from tests import factories
from tests.dashboards.conftest import DUTIES, add
from tests.rollouts.conftest import plan_spec


def test_bundle_of_a_proposed_rollback_holds_the_signals_when_it_was_decided(client, workflow, admin_user,
                                                                            containment_owner, auditor):
    rhea = factories.make_user("rhea", role=Role.RELEASE_MANAGER)
    factories.scope(rhea, workflow)
    governance.update_workflow(workflow.pk, actor=admin_user, autonomy_tier=2, off_hours_tier=None)
    for duty in DUTIES:
        governance.assign_containment(workflow.pk, actor=admin_user, user=containment_owner, duty=duty)
    base = timezone.now().replace(microsecond=0) - timedelta(minutes=30)
    with time_machine.travel(base, tick=False):
        plan = plans.start_rollout(plans.create_plan(actor=rhea, workflow=workflow, **plan_spec()).pk, actor=rhea)
    with time_machine.travel(base + timedelta(minutes=3), tick=False):
        add(plan, "latency_p95_ms", base + timedelta(minutes=1), [905, 930, 950, 990])
        add(plan, "error_rate", base + timedelta(minutes=1), [0.01] * 4)
        evaluator.evaluate_plan(plan.pk)
    action = RolloutAction.objects.get(plan=plan, kind="rollback")
    with time_machine.travel(base + timedelta(minutes=4), tick=False):
        approvals.record_decision(action.approval_request_id, actor=containment_owner, verdict="override",
                                  reason="known_change", justification="the batch job, not the release")
    client.force_login(auditor)
    bundle = json.loads(client.get(reverse("evidence:json", args=[action.approval_request_id])).content)
    assert bundle["request"]["subject"] == {"type": "rollouts.rolloutaction", "id": str(action.pk)}
    assert bundle["in_force"]["tier"] == 2 and bundle["request"]["mode"] == "override_window"
    signals = {s["metric"]: s["value"] for s in bundle["signals"]}
    assert signals == {"latency_p95_ms": 990.0, "error_rate": 0.01}
    assert all(s["decision"] == "olivia (override)" for s in bundle["signals"])
    assert bundle["evidence"]["other"]["trigger"]["rule"] == "latency_p95_ms > 800 sustained for 2 min"
    page = client.get(reverse("evidence:page", args=[action.approval_request_id])).content.decode()
    assert "Signals when each decision was taken" in page and "990.0" in page
