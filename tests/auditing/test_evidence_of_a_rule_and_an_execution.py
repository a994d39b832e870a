"""The evidence bundle of an agent action asked by a rule: the rule with the values it read, and
what happened after the approval (claimed and reported, or expired unclaimed)."""

from __future__ import annotations

import datetime as dt
import json

import pytest
import time_machine
from django.urls import reverse

from approvals import dispatch, executions
from approvals import services as approvals
from approvals.models import ActionRule
from governance import services as governance
from governance.permissions import Role
from tests import factories

ASKED = dt.datetime(2026, 3, 3, 10, 0, tzinfo=dt.UTC)


@pytest.fixture
def agent(workflow):
    requester = factories.make_user("rhea", role=Role.RELEASE_MANAGER)
    factories.scope(requester, workflow)
    return factories.make_service_account("refund-bot", owner=requester, workflows=[workflow])


@pytest.fixture
def asked(workflow, admin_user, agent):
    """refund_customer of 400, asked of one person by rule 2."""
    action = governance.define_action(workflow.pk, actor=admin_user, name="refund_customer", risk="high")
    approvals.set_action_rules(action.pk, actor=admin_user, rules=[
        {"condition": "double(params.amount) > 5000.0", "outcome": "deny", "reason": "Too big for an agent."},
        {"condition": "double(params.amount) <= 5000.0", "outcome": "approve", "quorum": 1},
    ])
    with time_machine.travel(ASKED, tick=False):
        answer = dispatch.dispatch(account=agent, workflow="refund-agent", action="refund_customer",
                                   parameters={"order": "A-1001", "amount": 400}, evidence={})
    return answer.approval


def approve_and_execute(req, approver, agent, status: str = "succeeded", detail: str = "") -> None:
    with time_machine.travel(ASKED + dt.timedelta(minutes=2), tick=False):
        approvals.record_decision(req.pk, actor=approver, verdict="approve")
    with time_machine.travel(ASKED + dt.timedelta(minutes=2, seconds=7), tick=False):
        execution = executions.claim(req.pk, account=agent)
    with time_machine.travel(ASKED + dt.timedelta(minutes=2, seconds=9), tick=False):
        executions.report_outcome(execution.pk, account=agent, status=status, detail=detail)


def bundle_of(client, req) -> dict:
    response = client.get(reverse("evidence:json", args=[req.pk]))
    assert response.status_code == 200
    return json.loads(response.content)


def test_json_bundle_holds_the_rule_its_values_and_the_execution_timeline(client, auditor, approver, agent, asked):
    approve_and_execute(asked, approver, agent)
    client.force_login(auditor)
    bundle = bundle_of(client, asked)
    rule = bundle["rule"]
    assert rule["id"] == ActionRule.objects.get(shadow=False, position=1).pk
    assert rule["text"] == "Rule 2: double(params.amount) <= 5000.0 → approve by 1"
    assert rule["values"] == {"params.amount": 400} and rule["values_read"] == ["params.amount = 400"]
    assert bundle["outcome"]["timeline"] == "approved by alice 10:02 · executed 10:02:07 · succeeded"
    execution = bundle["execution"]
    assert execution["state"] == "succeeded" and execution["claimed_at"].startswith("2026-03-03T10:02:07")
    assert execution["reported_at"].startswith("2026-03-03T10:02:09")
    actions = [e["event"]["action"] for e in bundle["audit"]["events"]]
    assert actions == ["approval.requested", "approval.decided", "approval.approved", "execution.claimed",
                       "execution.succeeded"]


def test_printable_bundle_shows_the_rule_values_and_timeline(client, auditor, approver, agent, asked):
    approve_and_execute(asked, approver, agent, status="failed", detail="card expired")
    client.force_login(auditor)
    html = client.get(reverse("evidence:page", args=[asked.pk])).content.decode()
    assert "Rule 2: double(params.amount) &lt;= 5000.0 → approve by 1" in html
    assert "params.amount = 400" in html
    assert "approved by alice 10:02 · executed 10:02:07 · failed: card expired" in html


def test_bundle_says_when_an_approval_expired_unclaimed(client, auditor, approver, asked):
    with time_machine.travel(ASKED + dt.timedelta(minutes=2), tick=False):
        approvals.record_decision(asked.pk, actor=approver, verdict="approve")
    with time_machine.travel(ASKED + dt.timedelta(minutes=2) + executions.window() + dt.timedelta(seconds=1),
                             tick=False):
        executions.expire_unclaimed()
    client.force_login(auditor)
    bundle = bundle_of(client, asked)
    assert bundle["outcome"]["timeline"] == "approved by alice 10:02 · expired unclaimed at 10:17:01"
    assert bundle["execution"]["id"] is None
    assert bundle["execution"]["claim_expired_at"].startswith("2026-03-03T10:17:01")


def test_request_without_a_rule_has_none_in_its_bundle(client, auditor, workflow):
    with time_machine.travel(ASKED, tick=False):
        req = approvals.create_request(workflow=workflow, kind="rollback", action="roll_back",
                                       requester="system:rollouts")
    client.force_login(auditor)
    bundle = bundle_of(client, req)
    assert bundle["rule"] is None and bundle["execution"] is None and bundle["outcome"]["timeline"] == "pending"
