"""The client's guard against a real server: one call, one request, one claimed execution, one
reported outcome; the function never runs without a granted execution."""

from __future__ import annotations

import threading
import time

import pytest
from django.db import connection

from approvals.models import ApprovalRequest, Execution
from governance import services as governance_services
from ringfence_client import (
    ApiError,
    Approval,
    DecisionTimeout,
    Denied,
    NotExecuted,
    PendingApproval,
    RingfenceClient,
)
from tests.api.conftest import decide

pytestmark = pytest.mark.django_db(transaction=True)


def refund_guard(rf: RingfenceClient, calls: list, **options):
    @rf.guard("refund-agent", "refund_customer", parameters=lambda customer, amount: {"customer": customer,
                                                                                       "amount": amount}, **options)
    def refund(customer: str, amount: str) -> str:
        calls.append((customer, amount))
        return f"refunded {amount} to {customer}"

    return refund


def test_two_calls_with_the_same_arguments_are_two_requests_each_run_only_if_approved(rf, approver):
    verdicts = iter(["approve", "approve", "reject"])
    asked: list[int] = []

    def person_decides(approval: Approval) -> None:
        asked.append(approval.id)
        decide(approval.id, approver, next(verdicts))

    calls: list = []
    refund = refund_guard(rf, calls, on_pending=person_decides)

    assert refund("C-7", "400.00") == "refunded 400.00 to C-7"
    assert refund("C-7", "400.00") == "refunded 400.00 to C-7"
    with pytest.raises(Denied) as denied:
        refund("C-7", "400.00")

    assert len(set(asked)) == 3 and ApprovalRequest.objects.count() == 3
    assert denied.value.approval_id == asked[2] and denied.value.approval.state == "rejected"
    assert calls == [("C-7", "400.00"), ("C-7", "400.00")]
    ran = Execution.objects.order_by("pk")
    assert [(e.request_id, e.state) for e in ran] == [(asked[0], "succeeded"), (asked[1], "succeeded")]


def test_on_pending_gets_the_approval_id_once_then_the_guard_waits_for_the_person(rf, approver):
    seen: list[Approval] = []
    people: list[threading.Timer] = []

    def decide_in_a_moment(approval: Approval) -> None:
        seen.append(approval)

        def person() -> None:
            try:
                decide(approval.id, approver, "approve")
            finally:
                connection.close()

        people.append(threading.Timer(0.2, person))
        people[-1].start()

    calls: list = []
    refund = refund_guard(rf, calls, on_pending=decide_in_a_moment, timeout=20)
    assert refund("C-7", "400.00") == "refunded 400.00 to C-7"
    people[0].join()

    [pending] = seen
    assert pending.state == "pending" and pending.execute_url.endswith(f"/approvals/{pending.id}/execute")
    execution = Execution.objects.get()
    assert execution.request_id == pending.id and execution.state == "succeeded"
    assert calls == [("C-7", "400.00")]


def test_an_allowed_call_runs_under_the_execution_of_the_answer_and_reports_success(rf):
    @rf.guard("refund-agent", "send_receipt", parameters=lambda order: {"order": order})
    def send_receipt(order: str) -> str:
        assert Execution.objects.get().state == "granted"  # granted before the function runs
        return f"sent {order}"

    assert send_receipt("A-1") == "sent A-1"
    execution = Execution.objects.get()
    assert execution.request_id is None and execution.state == "succeeded" and execution.reported_at


def test_a_function_that_raises_is_reported_failed_with_the_exception_text(rf, approver):
    @rf.guard("refund-agent", "refund_customer", on_pending=lambda a: decide(a.id, approver, "approve"))
    def refund() -> None:
        raise RuntimeError("card processor declined: limit reached")

    with pytest.raises(RuntimeError, match="card processor declined"):
        refund()

    execution = Execution.objects.get()
    assert execution.state == "failed" and execution.request_id is not None
    assert execution.detail == "RuntimeError: card processor declined: limit reached"


def test_an_interrupted_call_is_reported_failed_not_left_granted(rf):
    @rf.guard("refund-agent", "send_receipt", parameters=lambda order: {"order": order})
    def send_receipt(order: str) -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        send_receipt("A-1")
    execution = Execution.objects.get()
    assert (execution.state, execution.detail) == ("failed", "KeyboardInterrupt")


def test_the_guard_does_not_run_when_the_approval_was_already_claimed(rf, approver):
    def approved_and_claimed_elsewhere(approval: Approval) -> None:
        decide(approval.id, approver, "approve")
        rf.execute(approval.id)  # another worker of the same agent got there first

    calls: list = []
    refund = refund_guard(rf, calls, on_pending=approved_and_claimed_elsewhere)
    with pytest.raises(NotExecuted) as refused:
        refund("C-7", "400.00")

    assert isinstance(refused.value, ApiError) and refused.value.status == 409
    assert refused.value.code == "already_executed"
    assert refused.value.approval_id == ApprovalRequest.objects.get().pk
    assert calls == []
    assert Execution.objects.get().state == "granted"  # only the other worker's claim, not reported by us


def test_the_guard_does_not_run_when_the_workflow_is_paused_after_approval(rf, approver, containment_owner, workflow):
    def approved_then_paused(approval: Approval) -> None:
        decide(approval.id, approver, "approve")
        governance_services.pause_workflow(workflow.pk, actor=containment_owner, reason="incident 42")

    calls: list = []
    refund = refund_guard(rf, calls, on_pending=approved_then_paused)
    with pytest.raises(NotExecuted) as refused:
        refund("C-7", "400.00")

    assert refused.value.code == "paused" and refused.value.approval_id == ApprovalRequest.objects.get().pk
    assert calls == [] and not Execution.objects.exists()


def test_on_pending_raise_hands_back_the_approval_id_without_running(rf):
    calls: list = []
    refund = refund_guard(rf, calls, on_pending="raise")
    with pytest.raises(PendingApproval) as pending:
        refund("C-7", "400.00")
    assert ApprovalRequest.objects.get().pk == pending.value.approval_id
    assert calls == [] and not Execution.objects.exists()


def test_a_wait_that_times_out_carries_the_approval_id(rf):
    calls: list = []
    refund = refund_guard(rf, calls, timeout=0.3)
    started = time.monotonic()
    with pytest.raises(DecisionTimeout) as timed_out:
        refund("C-7", "400.00")
    assert time.monotonic() - started < 5
    assert timed_out.value.approval_id == ApprovalRequest.objects.get().pk
    assert calls == [] and not Execution.objects.exists()


def test_a_denied_dispatch_opens_nothing_and_runs_nothing(rf):
    calls: list = []

    @rf.guard("refund-agent", "wire_money")
    def wire_money() -> None:
        calls.append("wired")

    with pytest.raises(Denied) as denied:
        wire_money()
    assert denied.value.dispatch.code == "unknown_action" and denied.value.approval_id is None
    assert calls == [] and not Execution.objects.exists() and not ApprovalRequest.objects.exists()


def test_the_guard_takes_no_key_derived_from_the_arguments(rf):
    with pytest.raises(TypeError):
        rf.guard("refund-agent", "refund_customer", key=lambda customer, amount: f"refund-{customer}")
    with pytest.raises(ValueError):
        rf.guard("refund-agent", "refund_customer", on_pending="later")
