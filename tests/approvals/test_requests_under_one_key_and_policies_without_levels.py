"""Opening a request: one request per requester and key, and a policy with no levels refused.

The key's uniqueness is the database's (a unique constraint), with no lookup before the insert:
a repeated key must still return the first request, and a different request under it must be
refused without writing anything.
"""

from __future__ import annotations

import pytest

from approvals import services
from approvals.models import ApprovalRequest, EscalationLevel, Notice
from audit.models import AuditEvent


def written() -> tuple[int, int, int]:
    return ApprovalRequest.objects.count(), Notice.objects.count(), AuditEvent.objects.count()


def test_the_same_key_returns_the_first_request_and_writes_nothing_more(make_request):
    first = make_request(idempotency_key="order-A-1001")
    before = written()

    again = make_request(idempotency_key="order-A-1001")

    assert again.pk == first.pk
    assert written() == before
    assert AuditEvent.objects.filter(action="approval.requested", subject_id=str(first.pk)).count() == 1


def test_another_request_under_a_used_key_is_refused_and_writes_nothing(make_request):
    first = make_request(idempotency_key="order-A-1001")
    before = written()

    with pytest.raises(services.TransitionRefused) as refused:
        make_request(idempotency_key="order-A-1001", parameters={"order": "B-2002", "amount": "99.00"})

    assert (refused.value.code, refused.value.status, refused.value.field) == (
        "idempotency_mismatch", 422, "idempotency_key")
    assert written() == before
    assert ApprovalRequest.objects.get(pk=first.pk).parameters["order"] == "A-1001"


def test_the_first_level_by_position_times_the_request(make_request, workflow, admin_user):
    policy = services.define_policy(actor=admin_user, workflow=workflow, mode="gate", levels=[
        {"groups": ["approver"], "timeout_seconds": 300}, {"groups": ["senior_approver"], "timeout_seconds": 900}])

    req = make_request()

    assert req.policy_id == policy.pk
    assert (req.due_at - req.created_at).total_seconds() == 300


def test_a_policy_left_without_levels_is_refused_by_name_and_nothing_is_written(make_request, workflow, admin_user):
    policy = services.define_policy(actor=admin_user, workflow=workflow, mode="gate",
                                    levels=[{"groups": ["approver"], "timeout_seconds": 300}])
    EscalationLevel.objects.filter(policy=policy).delete()  # as an administrator could in the admin
    before = written()

    with pytest.raises(services.TransitionRefused) as refused:
        make_request()

    assert refused.value.code == "misconfigured"
    assert str(policy) in refused.value.message and "no levels" in refused.value.message
    assert written() == before
