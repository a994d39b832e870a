"""The request page says which rule asked and what it read, that a held request cannot be decided,
and where an approved agent action's execution stands."""

from __future__ import annotations

import datetime as dt

import pytest
import time_machine
from django.urls import reverse

from approvals import dispatch, executions, services
from approvals.models import ApprovalRequest, Decision
from audit.models import AuditEvent
from governance import services as governance

T0 = dt.datetime(2026, 3, 2, 10, 0, tzinfo=dt.UTC)  # a Monday, inside business hours
HTMX = {"HTTP_HX_REQUEST": "true"}


@pytest.fixture
def frozen():
    with time_machine.travel(T0, tick=False) as traveller:
        yield traveller


@pytest.fixture
def refund_rules(workflow, admin_user):
    """refund_customer: big refunds denied, up to 5000 asked of one person."""
    action = governance.define_action(workflow.pk, actor=admin_user, name="refund_customer", risk="high")
    services.set_action_rules(action.pk, actor=admin_user, rules=[
        {"condition": "double(params.amount) > 5000.0", "outcome": "deny",
         "reason": "Refunds above 5000 go to finance."},
        {"condition": "double(params.amount) <= 5000.0", "outcome": "approve", "quorum": 1},
    ])
    return action


def ask(agent, amount: int = 400) -> ApprovalRequest:
    answer = dispatch.dispatch(account=agent, workflow="refund-agent", action="refund_customer",
                               parameters={"order": "A-1001", "amount": amount}, evidence={})
    assert answer.decision == "pending", answer.reason
    return answer.approval


def page(client, req: ApprovalRequest) -> str:
    response = client.get(reverse("approvals:detail", args=[req.pk]))
    assert response.status_code == 200
    return response.content.decode()


def test_held_request_says_why_and_offers_no_decision(client, approver, containment_owner, make_request, workflow,
                                                      frozen):
    req = make_request()
    governance.pause_workflow(workflow.pk, actor=containment_owner, reason="incident 42")
    client.force_login(approver)
    html = page(client, req)
    assert "On hold: refund-agent was paused by olivia at 10:00: incident 42." in html
    assert "Nothing can be decided and its timers wait until the workflow is resumed." in html
    assert 'name="verdict"' not in html and reverse("approvals:decide", args=[req.pk]) not in html
    assert "data-countdown" not in html and "timer stopped with 10" in html

    governance.resume_workflow(workflow.pk, actor=containment_owner)
    html = page(client, req)
    assert "On hold" not in html and 'name="verdict" value="approve"' in html


def test_deciding_a_held_request_is_refused_and_changes_nothing(client, approver, containment_owner, make_request,
                                                                workflow, frozen):
    req = make_request()
    governance.pause_workflow(workflow.pk, actor=containment_owner, reason="incident 42")
    client.force_login(approver)
    events = AuditEvent.objects.count()
    url = reverse("approvals:decide", args=[req.pk])

    for headers in ({}, HTMX):
        refused = client.post(url, {"verdict": "approve"}, **headers)
        html = refused.content.decode()
        assert refused.status_code == 409
        assert "On hold: refund-agent was paused by olivia" in html and 'name="verdict"' not in html

    req.refresh_from_db()
    assert req.state == ApprovalRequest.State.PENDING and req.is_held
    assert not Decision.objects.filter(request=req).exists() and AuditEvent.objects.count() == events


def test_page_shows_the_rule_that_asked_the_values_it_read_and_the_quorum(client, approver, agent, refund_rules,
                                                                          frozen):
    req = ask(agent)
    client.force_login(approver)
    html = page(client, req)
    assert "Rule 2: double(params.amount) &lt;= 5000.0 → approve by 1" in html
    assert "params.amount = 400" in html
    assert "1 approval</dd>" in html
    assert reverse("approvals:action", args=["refund-agent", "refund_customer"]) in html


def test_quorum_names_the_roles_it_needs(client, approver, agent, refund_rules, admin_user, frozen):
    services.set_action_rules(refund_rules.pk, actor=admin_user, rules=[
        {"condition": "params.amount >= 100", "outcome": "approve", "quorum": 2, "approver_roles": ["senior_approver"]},
    ])
    req = ask(agent)
    client.force_login(approver)
    html = page(client, req)
    assert "Rule 1: params.amount &gt;= 100 → approve by 2 incl. senior_approver" in html
    assert "2 approvals incl. a senior_approver from different people" in html
    assert "0 of 2 approvals incl. a senior_approver so far." in html


def test_page_follows_an_approved_action_from_claim_to_outcome(client, approver, agent, refund_rules, frozen):
    req = ask(agent)
    client.force_login(approver)
    assert "Execution" not in page(client, req)  # pending: nothing to execute yet

    frozen.shift(dt.timedelta(minutes=2))
    services.record_decision(req.pk, actor=approver, verdict="approve")
    assert "Claim by 10:17:00" in page(client, req)

    frozen.shift(dt.timedelta(seconds=7))
    execution = executions.claim(req.pk, account=agent)
    assert "Claimed at 10:02:07, no outcome reported yet" in page(client, req)

    frozen.shift(dt.timedelta(seconds=30))
    executions.report_outcome(execution.pk, account=agent, status="succeeded", detail="refund R-9 issued")
    html = page(client, req)
    assert "Executed 10:02:07 · succeeded: refund R-9 issued" in html and "Outcome reported at 10:02:37." in html


def test_page_says_when_an_approval_expired_unclaimed(client, approver, agent, refund_rules, frozen):
    req = ask(agent)
    services.record_decision(req.pk, actor=approver, verdict="approve")
    frozen.shift(executions.window() + dt.timedelta(seconds=1))
    client.force_login(approver)
    assert "Not claimed by 10:15:00" in page(client, req)
    assert executions.expire_unclaimed() == 1
    html = page(client, req)
    assert "Expired unclaimed at 10:15:01" in html and "The agent did not claim it by 10:15:00" in html


def test_a_failed_execution_says_so_with_its_detail(client, approver, agent, refund_rules, frozen):
    req = ask(agent)
    services.record_decision(req.pk, actor=approver, verdict="approve")
    execution = executions.claim(req.pk, account=agent)
    executions.report_outcome(execution.pk, account=agent, status="failed", detail="payment provider timed out")
    client.force_login(approver)
    html = page(client, req)
    assert "Executed 10:00:00 · failed: payment provider timed out" in html
    assert 'class="execution execution-failed"' in html


def test_outsider_cannot_see_the_request(client, outsider, agent, refund_rules, frozen):
    req = ask(agent)
    client.force_login(outsider)
    assert client.get(reverse("approvals:detail", args=[req.pk])).status_code == 404
