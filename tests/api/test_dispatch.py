"""POST /dispatch: allow, deny or pending by the kill switch, the declared actions and the tier."""

from __future__ import annotations

import datetime as dt

import pytest
import time_machine

from approvals.models import ApprovalRequest
from audit.models import AuditEvent
from governance import services
from tests.api.conftest import assert_problem, dispatch

pytestmark = pytest.mark.django_db

TUESDAY_10 = dt.datetime(2030, 1, 8, 10, 0, tzinfo=dt.UTC)   # business hours of the workflow (9–17 UTC)
TUESDAY_22 = dt.datetime(2030, 1, 8, 22, 0, tzinfo=dt.UTC)   # off hours


@pytest.fixture(autouse=True)
def _business_hours():
    with time_machine.travel(TUESDAY_10, tick=False):
        yield


def test_low_risk_action_at_tier_2_is_allowed_and_audited(api, actions):
    response = dispatch(api, "send_receipt", parameters={"order": "A-1"})
    assert response.status_code == 200
    body = response.json()
    assert body["decision"] == "allow" and body["code"] == "within_autonomy"
    assert body["tier"] == 2 and body["business_hours"] is True and body["approval_id"] is None
    event = AuditEvent.objects.get(action="dispatch.allowed")
    assert event.actor_label == "refund-bot" and event.workflow_slug == "refund-agent"
    assert event.data["action"] == "send_receipt" and event.data["parameters"] == {"order": "A-1"}
    assert ApprovalRequest.objects.count() == 0


def test_riskier_action_is_pending_with_an_approval_to_poll(api, actions):
    response = dispatch(api, "refund_customer", parameters={"order": "A-1", "amount": "120.00"},
                        evidence={"summary": "refund above limit"}, confidence=0.8)
    body = response.json()
    assert response.status_code == 200 and body["decision"] == "pending" and body["code"] == "approval_required"
    request = ApprovalRequest.objects.get()
    assert body["approval_id"] == request.pk and body["poll_url"] == f"/api/v1/approvals/{request.pk}"
    assert (request.state == "pending" and request.kind == "agent_action"
            and request.requested_by_service.name == "refund-bot")
    assert request.parameters == {"order": "A-1", "amount": "120.00"} and str(request.confidence) == "0.8000"
    assert AuditEvent.objects.filter(action="approval.requested").count() == 1
    assert not AuditEvent.objects.filter(action__startswith="dispatch.").exists()


def test_quorum_of_the_declared_action_is_used(api, actions):
    body = dispatch(api, "close_account").json()
    assert body["decision"] == "pending" and ApprovalRequest.objects.get(pk=body["approval_id"]).quorum == 2


@pytest.mark.parametrize(("tier", "allowed"), [
    (1, {"send_receipt", "issue_credit"}),
    (2, {"send_receipt"}),
    (3, set()),
])
def test_tier_decides_which_risks_run_unattended(api, actions, admin_user, tier, allowed):
    services.update_workflow(actions.pk, actor=admin_user, autonomy_tier=tier)
    decisions = {name: dispatch(api, name).json()["decision"]
                 for name in ("send_receipt", "issue_credit", "refund_customer", "close_account")}
    assert {name for name, d in decisions.items() if d == "allow"} == allowed
    assert all(d == "pending" for name, d in decisions.items() if name not in allowed)


def test_off_hours_tier_applies_outside_business_hours(api, actions, admin_user):
    services.update_workflow(actions.pk, actor=admin_user, off_hours_tier=3)
    assert dispatch(api, "send_receipt").json()["decision"] == "allow"
    with time_machine.travel(TUESDAY_22, tick=False):
        body = dispatch(api, "send_receipt").json()
    assert body["decision"] == "pending" and body["tier"] == 3 and body["business_hours"] is False


def test_paused_workflow_denies_everything_and_audits_it(api, actions, containment_owner):
    services.pause_workflow(actions.pk, actor=containment_owner, reason="incident 42")
    for action in ("send_receipt", "refund_customer", "undeclared"):
        body = dispatch(api, action).json()
        assert body["decision"] == "deny" and body["code"] == "paused" and "incident 42" in body["reason"]
    assert AuditEvent.objects.filter(action="dispatch.denied").count() == 3
    assert ApprovalRequest.objects.count() == 0


def test_undeclared_action_is_denied(api, actions):
    body = dispatch(api, "wire_money").json()
    assert body["decision"] == "deny" and body["code"] == "unknown_action"
    assert ApprovalRequest.objects.count() == 0


def test_missing_idempotency_key_is_400_and_changes_nothing(api, actions):
    body = assert_problem(dispatch(api, "refund_customer", key=None), 400, "idempotency_key_missing")
    assert body["errors"][0] == {"in": "header", "field": "Idempotency-Key", "message": "This header is required.",
                                 "type": "invalid"}
    assert (ApprovalRequest.objects.count() == 0
            and not AuditEvent.objects.filter(action__startswith="dispatch").exists())


def test_same_key_returns_the_same_request(api, actions):
    first = dispatch(api, "refund_customer", key="order-A-1", parameters={"order": "A-1"})
    again = dispatch(api, "refund_customer", key="order-A-1", parameters={"order": "A-1"})
    assert again.json() == first.json() and again["Idempotent-Replayed"] == "true"
    assert ApprovalRequest.objects.count() == 1
    assert_problem(dispatch(api, "refund_customer", key="order-A-1", parameters={"order": "B-2"}), 422,
                   "idempotency_key_reused")
    assert ApprovalRequest.objects.count() == 1


def test_workflow_outside_the_token_scope_is_404(api, actions, other_workflow):
    assert_problem(dispatch(api, "send_receipt", workflow="account-disable-agent"), 404, "not_found")
    assert_problem(dispatch(api, "send_receipt", workflow="no-such-workflow"), 404, "not_found")


@pytest.mark.parametrize(("fields", "field"), [
    ({"confidence": 1.5}, "confidence"),
    ({"parameters": [1, 2]}, "parameters"),
    ({"parameters": {"a": "\x00"}}, "parameters"),
    ({"evidence": {"x": "y" * 40_000}}, "evidence"),
    ({"surprise": True}, "surprise"),
])
def test_invalid_fields_are_named(api, actions, fields, field):
    body = assert_problem(dispatch(api, "send_receipt", **fields), 422, "invalid")
    assert field in [e["field"] for e in body["errors"]]
    assert not AuditEvent.objects.filter(action__startswith="dispatch").exists()


def test_deeply_nested_parameters_are_refused(api, actions):
    nested: dict = {}
    for _ in range(50):
        nested = {"n": nested}
    assert_problem(dispatch(api, "send_receipt", parameters=nested), 422, "invalid")


def test_revoked_token_is_refused_at_once(api, actions, agent, admin_user):
    assert dispatch(api, "send_receipt").status_code == 200
    token = agent.account.tokens.get()
    services.revoke_token(token.pk, actor=admin_user)
    assert_problem(dispatch(api, "send_receipt"), 401, "token_revoked")
