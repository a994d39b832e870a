from __future__ import annotations

import datetime as dt

import pytest
import time_machine
from django.contrib.auth.models import Group

from approvals import services
from approvals.models import ApprovalRequest, Decision
from audit.models import AuditEvent
from core.errors import TransitionRefused
from governance.permissions import Role
from tests import factories

State = ApprovalRequest.State
T0 = dt.datetime(2026, 3, 2, 10, 0, tzinfo=dt.UTC)


def approval_events(req: ApprovalRequest) -> list[str]:
    return list(AuditEvent.objects.filter(subject_type="approvals.approvalrequest", subject_id=str(req.pk))
                .order_by("seq").values_list("action", flat=True))


def assert_refused_and_unchanged(req: ApprovalRequest, code: str, call) -> TransitionRefused:
    before_events = AuditEvent.objects.count()
    with pytest.raises(TransitionRefused) as refused:
        call()
    assert refused.value.code == code
    fresh = ApprovalRequest.objects.get(pk=req.pk)
    assert fresh.state == req.state and fresh.level == req.level
    assert Decision.objects.filter(request=req).count() == req.decisions.count()
    assert AuditEvent.objects.count() == before_events
    return refused.value


def test_approval_by_an_approver_closes_a_quorum_of_one(make_request, approver):
    req = make_request()
    services.record_decision(req.pk, actor=approver, verdict="approve")
    req.refresh_from_db()
    assert req.state == State.APPROVED and req.closed_at is not None
    assert req.closed_by_label == "alice"
    assert approval_events(req) == ["approval.requested", "approval.decided", "approval.approved"]


def test_reject_needs_a_justification(make_request, approver):
    req = make_request()
    refusal = assert_refused_and_unchanged(
        req, "justification_required", lambda: services.record_decision(req.pk, actor=approver, verdict="reject",
                                                                       justification="   "))
    assert refusal.status == 422 and refusal.field == "justification"
    services.record_decision(req.pk, actor=approver, verdict="reject", justification="Order was already refunded.")
    req.refresh_from_db()
    assert req.state == State.REJECTED
    assert req.decisions.get().justification == "Order was already refunded."


def test_override_needs_a_reason_category(make_request, approver):
    req = make_request(mode="override_window", kind="rollback")
    refusal = assert_refused_and_unchanged(
        req, "invalid", lambda: services.record_decision(req.pk, actor=approver, verdict="override",
                                                        justification="Latency rise is the migration."))
    assert refusal.field == "reason"
    services.record_decision(req.pk, actor=approver, verdict="override", justification="Latency rise is the migration.",
                             reason="known_change")
    req.refresh_from_db()
    assert req.state == State.OVERRIDDEN


def test_a_gate_cannot_be_overridden_and_a_window_cannot_be_rejected(make_request, approver):
    gate = make_request()
    assert_refused_and_unchanged(gate, "invalid", lambda: services.record_decision(
        gate.pk, actor=approver, verdict="override", justification="x", reason="noise"))
    window = make_request(mode="override_window", idempotency_key="w")
    assert_refused_and_unchanged(window, "invalid", lambda: services.record_decision(
        window.pk, actor=approver, verdict="reject", justification="x"))


def test_requester_cannot_approve_own_request(workflow, approver, second_approver):
    req = services.create_request(workflow=workflow, kind="policy_change", action="raise_refund_limit",
                                  requester=approver)
    refusal = assert_refused_and_unchanged(req, "four_eyes", lambda: services.record_decision(
        req.pk, actor=approver, verdict="approve"))
    assert refusal.status == 403
    services.record_decision(req.pk, actor=second_approver, verdict="approve")
    assert ApprovalRequest.objects.get(pk=req.pk).state == State.APPROVED


def test_owner_of_the_asking_service_account_cannot_decide(make_request, requester, workflow):
    factories.scope(requester, workflow, Role.APPROVER)  # even with the approve permission
    requester.groups.add(Group.objects.get(name=Role.APPROVER))
    req = make_request()
    assert_refused_and_unchanged(req, "four_eyes", lambda: services.record_decision(
        req.pk, actor=requester, verdict="approve"))


def test_outsider_is_refused_without_learning_anything(make_request, outsider):
    req = make_request()
    refusal = assert_refused_and_unchanged(req, "forbidden", lambda: services.record_decision(
        req.pk, actor=outsider, verdict="approve"))
    assert "refund-agent" in refusal.message


def test_quorum_needs_distinct_people(make_request, approver, second_approver):
    req = make_request(quorum=2)
    services.record_decision(req.pk, actor=approver, verdict="approve")
    assert ApprovalRequest.objects.get(pk=req.pk).state == State.PENDING
    assert_refused_and_unchanged(req, "already_decided", lambda: services.record_decision(
        req.pk, actor=approver, verdict="approve"))
    services.record_decision(req.pk, actor=second_approver, verdict="approve")
    req.refresh_from_db()
    assert req.state == State.APPROVED and req.closed_by_label == "alice and Bob"


def test_late_decider_learns_who_decided_and_when(make_request, approver, second_approver):
    with time_machine.travel(T0, tick=False):
        req = make_request()
        services.record_decision(req.pk, actor=second_approver, verdict="approve")
    req.refresh_from_db()
    refusal = assert_refused_and_unchanged(req, "not_pending", lambda: services.record_decision(
        req.pk, actor=approver, verdict="reject", justification="no"))
    assert refusal.status == 409
    assert refusal.message == "Already approved by Bob at 10:00."


def test_senior_approver_acts_only_once_escalated(make_request, senior_approver):
    with time_machine.travel(T0, tick=False) as traveller:
        req = make_request()
        assert_refused_and_unchanged(req, "forbidden", lambda: services.record_decision(
            req.pk, actor=senior_approver, verdict="approve"))
        traveller.shift(dt.timedelta(minutes=10))
        assert services.handle_due(req.pk) == "escalated"
        services.record_decision(req.pk, actor=senior_approver, verdict="approve")
    req.refresh_from_db()
    assert req.state == State.APPROVED and req.level == 1
    assert req.decisions.get().level == 1


def test_superuser_decides_anywhere_but_never_their_own_request(workflow, make_request):
    root = factories.make_user("root", is_superuser=True, is_staff=True)
    req = make_request()
    services.record_decision(req.pk, actor=root, verdict="approve")
    assert ApprovalRequest.objects.get(pk=req.pk).state == State.APPROVED
    own = services.create_request(workflow=workflow, kind="policy_change", action="lower_limit", requester=root)
    assert_refused_and_unchanged(own, "four_eyes", lambda: services.record_decision(
        own.pk, actor=root, verdict="approve"))
