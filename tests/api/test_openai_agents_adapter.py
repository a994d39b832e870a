"""The OpenAI Agents SDK adapter against a live Ringfence, with the SDK's scripted test model (no
network but Ringfence): the tool's approval is a Ringfence dispatch, the run waits on Ringfence."""

from __future__ import annotations

import asyncio

import pytest
from agents import Agent, Runner, set_tracing_disabled
from agents.testing import ScriptedModel, assistant_message, function_call

from approvals.models import ApprovalRequest, Execution
from ringfence_client.openai_agents import resolve, ringfence_tool, run
from tests.api.conftest import decide
from tests.api.mcp_helpers import orm

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture(autouse=True)
def _no_trace_export():
    """The SDK exports traces to OpenAI by default; these tests reach nothing but Ringfence."""
    set_tracing_disabled(True)
    yield
    set_tracing_disabled(False)


def support_agent(rf, calls: list, action: str = "refund_customer", *tool_calls) -> tuple[Agent, ScriptedModel]:
    @ringfence_tool(rf, "refund-agent", action)
    def refund(order: str, amount: str) -> str:
        """Refund an order."""
        calls.append(order)
        return f"refunded {amount} on {order}"

    model = ScriptedModel([
        [function_call("refund", args, call_id=f"call-{n}") for n, args in enumerate(tool_calls)]
        or [function_call("refund", {"order": "A-1", "amount": "40.00"}, call_id="call-0")],
        [assistant_message("Done.")],
    ])
    return Agent(name="support", instructions="Refund when asked.", tools=[refund], model=model), model


async def person_decides(verdict: str, approver, count: int = 1) -> None:
    """Decide each request as soon as it is open, as a person watching the queue would."""
    decided: set[int] = set()
    while len(decided) < count:
        pending = await orm(lambda: list(ApprovalRequest.objects.filter(state="pending")
                                         .exclude(pk__in=decided).values_list("pk", flat=True)))
        for pk in pending:
            await asyncio.to_thread(decide, pk, approver, verdict)
            decided.add(pk)
        await asyncio.sleep(0.02)


def test_a_pending_tool_call_runs_once_after_a_person_approves(rf, approver):
    calls: list = []
    agent, model = support_agent(rf, calls)

    async def scenario():
        person = asyncio.create_task(person_decides("approve", approver))
        result = await run(agent, "Refund order A-1", timeout=15, poll=5)
        await person
        return result

    result = asyncio.run(scenario())
    assert result.final_output == "Done." and calls == ["A-1"]
    request = ApprovalRequest.objects.get()
    assert request.state == "approved" and request.parameters == {"order": "A-1", "amount": "40.00"}
    assert request.execution.state == "succeeded"
    assert model.remaining_steps == 0


def test_the_plain_runner_stops_on_the_interruption_and_resolve_answers_it(rf, approver):
    calls: list = []
    agent, _ = support_agent(rf, calls)

    async def scenario():
        first = await Runner.run(agent, "Refund order A-1")
        assert [i.tool_name for i in first.interruptions] == ["refund"] and calls == []
        await person_decides("approve", approver)
        state = first.to_state()
        await resolve(agent, state, first.interruptions, timeout=10)
        return await Runner.run(agent, state)

    result = asyncio.run(scenario())
    assert result.final_output == "Done." and calls == ["A-1"]
    assert ApprovalRequest.objects.count() == 1 and Execution.objects.get().state == "succeeded"


def test_a_rejected_call_never_runs_and_the_model_is_told(rf, approver):
    calls: list = []
    agent, model = support_agent(rf, calls)

    async def scenario():
        person = asyncio.create_task(person_decides("reject", approver))
        result = await run(agent, "Refund order A-1", timeout=15, poll=5)
        await person
        return result

    result = asyncio.run(scenario())
    assert result.final_output == "Done." and calls == []
    told = [item.output for item in result.new_items if getattr(item, "type", "") == "tool_call_output_item"]
    assert told and "rejected" in told[0] and "did not run" in told[0]
    assert not Execution.objects.exists()


def test_allowed_calls_run_without_a_stop_and_denied_never(rf):
    calls: list = []
    allowed, _ = support_agent(rf, calls, "send_receipt")
    assert asyncio.run(run(allowed, "Receipt please")).final_output == "Done."
    denied, _ = support_agent(rf, calls, "wire_money")
    result = asyncio.run(run(denied, "Wire it"))
    told = [item.output for item in result.new_items if getattr(item, "type", "") == "tool_call_output_item"]
    assert "Ringfence denied wire_money" in told[0]
    assert calls == ["A-1"] and Execution.objects.get().state == "succeeded"
    assert not ApprovalRequest.objects.exists()


def test_the_async_client_answers_the_same(live_server, agent, actions, settings, approver):
    from ringfence_client import AsyncRingfenceClient

    settings.API_LONG_POLL_INTERVAL_SECONDS = 0.05
    calls: list = []

    async def scenario():
        async with AsyncRingfenceClient(live_server.url, agent.token, timeout=10, backoff=0.05) as rf:
            support, _ = support_agent(rf, calls)
            person = asyncio.create_task(person_decides("approve", approver))
            result = await run(support, "Refund order A-1", timeout=15, poll=5)
            await person
            return result

    assert asyncio.run(scenario()).final_output == "Done." and calls == ["A-1"]
    assert ApprovalRequest.objects.get().execution.state == "succeeded"


def test_two_runs_with_the_same_call_id_each_ask_and_run_under_their_own_execution(rf):
    calls: list = []
    receipt, _ = support_agent(rf, calls, "send_receipt")
    assert asyncio.run(run(receipt, "Receipt please")).final_output == "Done."
    # The scripted model names its call "call-0" again, as ids repeat across runs.
    receipt.model = ScriptedModel([[function_call("refund", {"order": "A-1", "amount": "40.00"}, call_id="call-0")],
                                   [assistant_message("Done.")]])
    assert asyncio.run(run(receipt, "Receipt please")).final_output == "Done."
    assert calls == ["A-1", "A-1"]
    assert list(Execution.objects.values_list("state", flat=True)) == ["succeeded", "succeeded"]


def test_an_allow_replayed_to_another_process_for_the_same_call_id_does_not_run(rf):
    calls: list = []
    first, _ = support_agent(rf, calls, "send_receipt")
    assert asyncio.run(run(first, "Receipt please")).final_output == "Done."
    again, _ = support_agent(rf, calls, "send_receipt")  # a new process: the same key, the first answer replayed
    result = asyncio.run(run(again, "Receipt please"))
    told = [item.output for item in result.new_items if getattr(item, "type", "") == "tool_call_output_item"]
    assert "did not run" in told[0] and "already allowed" in told[0]
    assert calls == ["A-1"] and Execution.objects.get().state == "succeeded"


@pytest.mark.parametrize("call_id", [None, ""])
def test_a_tool_call_without_an_id_is_refused_before_dispatch(rf, call_id):
    from ringfence_client import RingfenceError

    calls: list = []
    receipt, _ = support_agent(rf, calls, "send_receipt")
    with pytest.raises(RingfenceError, match="without a tool call id"):
        asyncio.run(receipt.tools[0].ringfence.dispatch({"order": "A-1", "amount": "1"}, call_id))
    assert calls == [] and not Execution.objects.exists()
