"""The guard on `async def` functions against a real server: one call, one request, one claimed
execution, one reported outcome; the function never runs without a granted execution. With the
async client the calls to Ringfence are awaited; with the sync client they run in a worker thread."""

from __future__ import annotations

import asyncio
import inspect

import pytest

from approvals.models import ApprovalRequest, Execution
from ringfence_client import (
    Approval,
    AsyncRingfenceClient,
    DecisionTimeout,
    Denied,
    NotExecuted,
    PendingApproval,
    RingfenceClient,
)
from tests.api.conftest import decide

pytestmark = pytest.mark.django_db(transaction=True)


def run(url: str, agent, body, **options):
    """Run `body(rf)` with an async client on a fresh event loop."""
    async def main():
        async with AsyncRingfenceClient(url, agent.token, timeout=10, backoff=0.05, **options) as rf:
            return await body(rf)

    return asyncio.run(main())


def refund_guard(rf, calls: list, **options):
    @rf.guard("refund-agent", "refund_customer", parameters=lambda customer, amount: {"customer": customer,
                                                                                       "amount": amount}, **options)
    async def refund(customer: str, amount: str) -> str:
        await asyncio.sleep(0)
        calls.append((customer, amount))
        return f"refunded {amount} to {customer}"

    return refund


def test_pending_approved_executed_once_and_reported_and_a_rejected_call_never_runs(url, agent, approver):
    verdicts = iter(["approve", "approve", "reject"])
    asked: list[int] = []
    calls: list = []

    async def person_decides(approval: Approval) -> None:  # on_pending may be async with the async client
        asked.append(approval.id)
        await asyncio.to_thread(decide, approval.id, approver, next(verdicts))

    async def body(rf: AsyncRingfenceClient):
        refund = refund_guard(rf, calls, on_pending=person_decides)
        assert inspect.iscoroutinefunction(refund)
        first = await refund("C-7", "400.00")
        second = await refund("C-7", "400.00")
        with pytest.raises(Denied) as denied:
            await refund("C-7", "400.00")
        return first, second, denied.value

    first, second, denied = run(url, agent, body)
    assert first == second == "refunded 400.00 to C-7"
    assert len(set(asked)) == 3 and ApprovalRequest.objects.count() == 3
    assert denied.approval_id == asked[2] and denied.approval.state == "rejected"
    assert calls == [("C-7", "400.00"), ("C-7", "400.00")]
    ran = Execution.objects.order_by("pk")
    assert [(e.request_id, e.state) for e in ran] == [(asked[0], "succeeded"), (asked[1], "succeeded")]


def test_an_allowed_call_runs_under_the_granted_execution_and_reports_success(url, agent):
    states: list[str] = []

    async def body(rf: AsyncRingfenceClient):
        @rf.guard("refund-agent", "send_receipt", parameters=lambda order: {"order": order})
        async def send_receipt(order: str) -> str:
            states.append(await asyncio.to_thread(lambda: Execution.objects.get().state))
            return f"sent {order}"

        return await send_receipt("A-1")

    assert run(url, agent, body) == "sent A-1"
    assert states == ["granted"]  # granted before the function ran
    execution = Execution.objects.get()
    assert execution.request_id is None and execution.state == "succeeded" and execution.reported_at


def test_a_function_that_raises_is_reported_failed_with_the_exception_text(url, agent, approver):
    async def body(rf: AsyncRingfenceClient):
        @rf.guard("refund-agent", "refund_customer", on_pending=lambda a: asyncio.to_thread(
            decide, a.id, approver, "approve"))
        async def refund() -> None:
            raise RuntimeError("card processor declined: limit reached")

        await refund()

    with pytest.raises(RuntimeError, match="card processor declined"):
        run(url, agent, body)
    execution = Execution.objects.get()
    assert execution.state == "failed" and execution.request_id is not None
    assert execution.detail == "RuntimeError: card processor declined: limit reached"


def test_a_cancelled_call_is_reported_failed_not_left_granted(url, agent):
    async def body(rf: AsyncRingfenceClient):
        started = asyncio.Event()

        @rf.guard("refund-agent", "send_receipt", parameters=lambda order: {"order": order})
        async def send_receipt(order: str) -> None:
            started.set()
            await asyncio.sleep(60)

        call = asyncio.create_task(send_receipt("A-1"))
        await started.wait()
        call.cancel()
        with pytest.raises(asyncio.CancelledError):
            await call

    run(url, agent, body)
    execution = Execution.objects.get()
    assert (execution.state, execution.detail) == ("failed", "CancelledError")


def test_the_guard_does_not_run_when_the_approval_was_already_claimed(url, agent, approver):
    calls: list = []

    async def body(rf: AsyncRingfenceClient):
        async def approved_and_claimed_elsewhere(approval: Approval) -> None:
            await asyncio.to_thread(decide, approval.id, approver, "approve")
            await rf.execute(approval.id)  # another worker of the same agent got there first

        with pytest.raises(NotExecuted) as refused:
            await refund_guard(rf, calls, on_pending=approved_and_claimed_elsewhere)("C-7", "400.00")
        return refused.value

    refused = run(url, agent, body)
    assert (refused.status, refused.code) == (409, "already_executed")
    assert refused.approval_id == ApprovalRequest.objects.get().pk
    assert calls == [] and Execution.objects.get().state == "granted"


def test_raise_timeout_and_deny_run_nothing(url, agent):
    calls: list = []

    async def body(rf: AsyncRingfenceClient):
        with pytest.raises(PendingApproval) as pending:
            await refund_guard(rf, calls, on_pending="raise")("C-7", "400.00")
        with pytest.raises(DecisionTimeout) as timed_out:
            await refund_guard(rf, calls, timeout=0.3)("C-8", "400.00")

        @rf.guard("refund-agent", "wire_money")
        async def wire_money() -> None:
            calls.append("wired")

        with pytest.raises(Denied) as denied:
            await wire_money()
        return pending.value, timed_out.value, denied.value

    pending, timed_out, denied = run(url, agent, body)
    assert ApprovalRequest.objects.get(parameters__customer="C-7").pk == pending.approval_id
    assert ApprovalRequest.objects.get(parameters__customer="C-8").pk == timed_out.approval_id
    assert denied.dispatch.code == "unknown_action" and denied.approval_id is None
    assert calls == [] and not Execution.objects.exists() and ApprovalRequest.objects.count() == 2


def test_the_async_clients_guard_awaits_a_plain_function_too(url, agent):
    async def body(rf: AsyncRingfenceClient):
        @rf.guard("refund-agent", "send_receipt")
        def send_receipt() -> str:
            return "sent"

        assert inspect.iscoroutinefunction(send_receipt)
        return await send_receipt()

    assert run(url, agent, body) == "sent"
    assert Execution.objects.get().state == "succeeded"


def test_the_sync_clients_guard_keeps_an_async_function_async(url, agent, approver):
    rf = RingfenceClient(url, agent.token, timeout=10, backoff=0.05)
    calls: list = []
    # on_pending runs in the guard's worker thread, where the ORM may be used directly.
    refund = refund_guard(rf, calls, on_pending=lambda a: decide(a.id, approver, "approve"))
    assert inspect.iscoroutinefunction(refund)

    assert asyncio.run(refund("C-7", "400.00")) == "refunded 400.00 to C-7"
    assert calls == [("C-7", "400.00")]
    execution = Execution.objects.get()
    assert execution.request_id == ApprovalRequest.objects.get().pk and execution.state == "succeeded"

    async def later(approval: Approval) -> None: ...

    with pytest.raises(TypeError, match="AsyncRingfenceClient"):
        asyncio.run(refund_guard(rf, calls, on_pending=later)("C-8", "400.00"))
    assert calls == [("C-7", "400.00")]
