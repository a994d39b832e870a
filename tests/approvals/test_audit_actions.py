"""Every approval transition writes exactly the audit events it promises, in the same transaction.

Walks each transition once (in the manner of zulip's test_audit_log) and checks that together
they cover every action in services.AUDIT_ACTIONS, so a new transition without an audit event,
or an event nobody tests, fails here.
"""

from __future__ import annotations

import datetime as dt

import pytest
import time_machine
from django.conf import settings

from approvals import executions, services
from approvals.models import ApprovalRequest, EscalationPolicy
from audit import log as audit
from audit.models import AuditEvent
from governance import services as governance_services

T0 = dt.datetime(2026, 3, 2, 10, 0, tzinfo=dt.UTC)


class Walk:
    def __init__(self) -> None:
        self.seen: set[str] = set()
        self.mark = AuditEvent.objects.order_by("-seq").values_list("seq", flat=True).first() or 0

    def new_actions(self, subject=None) -> list[str]:
        events = AuditEvent.objects.filter(seq__gt=self.mark).order_by("seq")
        self.mark = events.last().seq if events else self.mark
        actions = list(events.values_list("action", flat=True))
        if subject is not None:
            assert {(e.subject_type, e.subject_id) for e in events} == {audit.describe_subject(subject)}
        self.seen.update(actions)
        return actions


@pytest.fixture
def walk(make_request, approver, second_approver, senior_approver, containment_owner):
    with time_machine.travel(T0, tick=False) as traveller:
        w = Walk()
        w.traveller = traveller
        yield w


def test_every_transition_writes_its_audit_events(walk, make_request, admin_user, workflow, agent, approver,
                                                  containment_owner,
                                                  second_approver, senior_approver):
    req = make_request(idempotency_key="approve")
    assert walk.new_actions(req) == ["approval.requested"]
    assert make_request(idempotency_key="approve").pk == req.pk  # a replay is not a new request
    assert walk.new_actions() == []
    services.record_decision(req.pk, actor=approver, verdict="approve")
    assert walk.new_actions(req) == ["approval.decided", "approval.approved"]

    req = make_request(idempotency_key="quorum", quorum=2)
    walk.new_actions()
    services.record_decision(req.pk, actor=approver, verdict="approve")
    assert walk.new_actions(req) == ["approval.decided"]
    services.record_decision(req.pk, actor=second_approver, verdict="approve")
    assert walk.new_actions(req) == ["approval.decided", "approval.approved"]

    req = make_request(idempotency_key="reject")
    walk.new_actions()
    services.record_decision(req.pk, actor=approver, verdict="reject", justification="Duplicate order.")
    assert walk.new_actions(req) == ["approval.decided", "approval.rejected"]
    assert AuditEvent.objects.get(seq=walk.mark - 1).reason == "Duplicate order."

    req = make_request(idempotency_key="override", mode="override_window")
    walk.new_actions()
    services.record_decision(req.pk, actor=approver, verdict="override", justification="Known.", reason="known_change")
    assert walk.new_actions(req) == ["approval.decided", "approval.overridden"]

    req = make_request(idempotency_key="approve-now", mode="override_window")
    walk.new_actions()
    services.record_decision(req.pk, actor=approver, verdict="approve")
    assert walk.new_actions(req) == ["approval.decided", "approval.approved"]

    req = make_request(idempotency_key="cancel")
    walk.new_actions()
    services.cancel_request(req.pk, actor=agent, reason="The customer withdrew the claim.")
    assert walk.new_actions(req) == ["approval.cancelled"]

    gate = make_request(idempotency_key="ladder")
    window = make_request(idempotency_key="window", mode="override_window")
    manual = make_request(idempotency_key="manual")
    walk.new_actions()
    services.escalate_request(manual.pk, actor=approver, reason="Needs a senior's eye.")
    assert walk.new_actions(manual) == ["approval.escalated"]
    walk.traveller.shift(dt.timedelta(minutes=2, seconds=1))
    assert services.handle_due(window.pk) == "auto_approved"
    assert walk.new_actions(window) == ["approval.auto_approved"]
    walk.traveller.shift(dt.timedelta(minutes=8))
    assert services.handle_due(gate.pk) == "escalated"
    assert walk.new_actions(gate) == ["approval.escalated"]
    walk.traveller.shift(dt.timedelta(minutes=20))
    assert services.handle_due(gate.pk) == "expired"
    assert walk.new_actions(gate) == ["approval.expired"]
    assert services.handle_due(gate.pk) == "unchanged"  # a second firing writes nothing
    assert walk.new_actions() == []

    policy = services.define_policy(actor=admin_user, workflow=workflow, mode="gate",
                                    levels=[{"groups": ["approver"], "timeout_seconds": 300}])
    assert walk.new_actions(policy) == ["approval.policy_defined"]
    assert isinstance(policy, EscalationPolicy)

    action = governance_services.define_action(workflow.pk, actor=admin_user, name="refund_customer", risk="high")
    walk.new_actions()
    services.set_action_rules(action.pk, actor=admin_user, rules=[{"condition": "true", "outcome": "tier"}])
    assert walk.new_actions(action) == ["action.rules_set"]
    services.set_action_rules(action.pk, actor=admin_user, rules=[])  # removing every rule is audited too
    assert walk.new_actions(action) == ["action.rules_set"]

    # The kill switch holds what is pending and gives the time back on resume, each audited.
    held = make_request(idempotency_key="held")
    walk.new_actions()
    pending = ApprovalRequest.objects.filter(workflow=workflow, state="pending").count()
    governance_services.pause_workflow(workflow.pk, actor=agent, reason="incident 42")
    assert walk.new_actions() == ["workflow.paused"] + ["approval.held"] * pending
    governance_services.resume_workflow(workflow.pk, actor=containment_owner, reason="fixed")
    assert walk.new_actions() == ["workflow.resumed"] + ["approval.released"] * pending

    # One approval, one execution: the claim and the outcome; an unclaimed approval expires.
    services.record_decision(held.pk, actor=approver, verdict="approve")
    walk.new_actions()
    execution = executions.claim(held.pk, account=agent)
    assert walk.new_actions(held) == ["execution.claimed"]
    executions.report_outcome(execution.pk, account=agent, status="succeeded", detail="refunded")
    assert walk.new_actions(held) == ["execution.succeeded"]
    failed = make_request(idempotency_key="failed")
    services.record_decision(failed.pk, actor=approver, verdict="approve")
    walk.new_actions()
    execution = executions.claim(failed.pk, account=agent)
    executions.report_outcome(execution.pk, account=agent, status="failed", detail="gateway down")
    assert walk.new_actions(failed) == ["execution.claimed", "execution.failed"]
    unclaimed = make_request(idempotency_key="unclaimed")
    services.record_decision(unclaimed.pk, actor=approver, verdict="approve")
    walk.new_actions()
    walk.traveller.shift(dt.timedelta(seconds=settings.APPROVAL_EXECUTION_WINDOW_SECONDS + 1))
    approved_unclaimed = ApprovalRequest.objects.filter(state__in=["approved", "auto_approved"],
                                                       claimed_at__isnull=True, kind="agent_action").count()
    assert executions.expire_unclaimed() == approved_unclaimed
    assert walk.new_actions() == ["approval.claim_expired"] * approved_unclaimed
    assert ApprovalRequest.objects.get(pk=unclaimed.pk).claim_expired_at is not None

    assert walk.seen >= set(services.AUDIT_ACTIONS) | set(executions.AUDIT_ACTIONS)
    assert audit.verify_database().ok


def test_refused_transitions_write_nothing(walk, make_request, approver, outsider, agent):
    req = make_request()
    walk.new_actions()
    attempts = [
        lambda: services.record_decision(req.pk, actor=outsider, verdict="approve"),
        lambda: services.record_decision(req.pk, actor=approver, verdict="reject"),
        lambda: services.escalate_request(req.pk),  # the timer before the deadline
        lambda: services.cancel_request(req.pk, actor=outsider, reason="no"),
        lambda: services.cancel_request(req.pk, actor=agent, reason=""),
    ]
    for attempt in attempts:
        with pytest.raises(services.TransitionRefused):
            attempt()
    assert services.handle_due(req.pk) == "not_due"  # the timer firing early changes nothing
    assert walk.new_actions() == []
    assert ApprovalRequest.objects.get(pk=req.pk).state == ApprovalRequest.State.PENDING
