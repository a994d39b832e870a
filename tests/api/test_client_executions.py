"""The client's execution, cancel and discovery calls against a real server over HTTP."""

from __future__ import annotations

import pytest

from approvals import services as approval_services
from approvals.models import ApprovalRequest, Execution
from governance.models import GovernedAction
from ringfence_client import ApiError, NotExecuted, RingfenceClient
from tests.api.lossy_proxy import LossyProxy

pytestmark = pytest.mark.django_db(transaction=True)


def approved(rf: RingfenceClient, approver, order: str = "A-1") -> int:
    approval_id = rf.dispatch("refund-agent", "refund_customer", {"order": order}).approval_id
    approval_services.record_decision(approval_id, actor=approver, verdict="approve")
    return approval_id


def test_an_approval_is_claimed_once_and_a_second_claim_raises_already_executed(rf, approver):
    approval_id = approved(rf, approver)

    execution = rf.execute(approval_id)
    assert (execution.state, execution.action, execution.approval_id) == ("granted", "refund_customer", approval_id)
    assert execution.expires_at and execution.reported_at is None
    assert execution.outcome_url.endswith(f"/executions/{execution.id}/outcome")

    with pytest.raises(NotExecuted) as second:
        rf.execute(approval_id)
    assert isinstance(second.value, ApiError)
    assert (second.value.status, second.value.code, second.value.approval_id) == (409, "already_executed", approval_id)

    approval = rf.approval(approval_id)
    assert (approval.execution.id, approval.execution.state) == (execution.id, "granted")
    assert approval.claim_by and not approval.claim_expired
    assert Execution.objects.count() == 1


def test_a_pending_approval_cannot_be_claimed(rf):
    approval_id = rf.dispatch("refund-agent", "refund_customer", {"order": "A-1"}).approval_id
    with pytest.raises(NotExecuted) as refused:
        rf.execute(approval_id)
    assert refused.value.code == "not_approved" and not Execution.objects.exists()


def test_a_lost_claim_answer_is_retried_with_the_same_key_and_gets_the_same_execution(live_server, agent, actions,
                                                                                       approver):
    approval_id = approved(RingfenceClient(live_server.url, agent.token, timeout=10), approver)
    proxy = LossyProxy(int(live_server.url.rsplit(":", 1)[1])).start()
    try:
        rf = RingfenceClient(f"http://127.0.0.1:{proxy.port}", agent.token, timeout=10, backoff=0.05)
        proxy.lose_next = 1
        execution = rf.execute(approval_id)
    finally:
        proxy.stop()
    assert proxy.lost == 1 and proxy.forwarded == 2
    assert Execution.objects.get().pk == execution.id and execution.approval_id == approval_id


def test_an_outcome_is_reported_once_the_same_report_again_answers_the_same(rf, approver):
    execution = rf.execute(approved(rf, approver))

    reported = rf.report_outcome(execution.id, "failed", "card declined")
    assert (reported.id, reported.state, reported.detail) == (execution.id, "failed", "card declined")
    assert reported.reported_at
    assert rf.report_outcome(execution.id, "failed", "card declined") == reported

    with pytest.raises(ApiError) as conflict:
        rf.report_outcome(execution.id, "succeeded")
    assert (conflict.value.status, conflict.value.code) == (409, "outcome_reported")
    assert not isinstance(conflict.value, NotExecuted)
    assert Execution.objects.get().state == "failed"


def test_an_allow_carries_its_execution_and_the_rule_that_decided(rf, admin_user, workflow):
    refund = GovernedAction.objects.get(workflow=workflow, name="refund_customer")
    approval_services.set_action_rules(refund.pk, actor=admin_user, rules=[
        {"condition": "params.amount <= 50", "outcome": "allow"}])

    small = rf.dispatch("refund-agent", "refund_customer", {"order": "A-1", "amount": 20})
    assert (small.decision, small.code) == ("allow", "allowed_by_rule")
    assert small.rule.condition == "params.amount <= 50" and small.rule.position == 0 and not small.rule.shadow
    assert small.rule.outcome == "allow" and small.rule.values
    assert small.execution.state == "granted" and small.execution.approval_id is None
    assert small.execution.action == "refund_customer"
    assert Execution.objects.get().pk == small.execution.id

    large = rf.dispatch("refund-agent", "refund_customer", {"order": "A-2", "amount": 400})
    assert (large.decision, large.rule, large.execution, large.quorum) == ("pending", None, None, 1)
    assert large.approver_roles == []


def test_a_request_is_withdrawn_by_the_agent_that_asked(rf, approver):
    approval_id = rf.dispatch("refund-agent", "refund_customer", {"order": "A-1"}).approval_id

    cancelled = rf.cancel(approval_id, "the customer withdrew the claim")
    assert (cancelled.id, cancelled.state, cancelled.outcome) == (approval_id, "cancelled", "deny")
    assert ApprovalRequest.objects.get().state == "cancelled"

    with pytest.raises(ApiError) as again:
        rf.cancel(approval_id, "again")
    assert (again.value.status, again.value.code) == (409, "not_pending")
    with pytest.raises(NotExecuted) as claim:
        rf.execute(approval_id)
    assert claim.value.code == "not_approved"


def test_workflows_and_their_actions_are_listed_for_the_token(rf, admin_user, workflow):
    refund = GovernedAction.objects.get(workflow=workflow, name="refund_customer")
    approval_services.set_action_rules(refund.pk, actor=admin_user, rules=[
        {"condition": "params.amount > 1000", "outcome": "deny", "reason": "too large for an agent"}])

    [listed] = rf.workflows()
    assert (listed.slug, listed.tier, listed.paused) == ("refund-agent", 2, False)
    assert listed.actions_url.endswith("/workflows/refund-agent/actions")

    actions = {a.name: a for a in rf.actions("refund-agent")}
    assert set(actions) == {"send_receipt", "issue_credit", "refund_customer", "close_account"}
    assert (actions["refund_customer"].risk, actions["close_account"].quorum) == ("high", 2)
    assert len(actions["refund_customer"].rules) == 1 and "params.amount > 1000" in actions["refund_customer"].rules[0]
    assert actions["send_receipt"].rules == [] and actions["send_receipt"].shadow_rules == []

    with pytest.raises(ApiError) as missing:
        rf.actions("not-ours")
    assert missing.value.status == 404
