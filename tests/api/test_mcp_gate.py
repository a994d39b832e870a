"""The gate: another MCP server's tools re-exposed behind Ringfence. A tiny counter server stands
for the wrapped one; its counters say how often a tool really ran."""

from __future__ import annotations

import asyncio
import json
import sys

import pytest
import yaml

from approvals.models import ApprovalRequest, Execution
from ringfence_client.mcp.gate import GateConfig, GateConfigError
from tests.api.conftest import decide
from tests.api.mcp_helpers import ROOT, answer, command, error_text, orm, ringfence_env, session

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def counters(tmp_path):
    path = tmp_path / "counters.json"

    def read() -> dict[str, int]:
        return json.loads(path.read_text()) if path.exists() else {}

    read.path = path  # type: ignore[attr-defined]
    return read


@pytest.fixture
def gate(live_server, agent, actions, settings, tmp_path, counters):
    settings.API_LONG_POLL_INTERVAL_SECONDS = 0.05
    config = {
        "server": {"command": sys.executable, "args": [str(ROOT / "tests/api/mcp_fixtures/counter_server.py")],
                   "env": {"COUNTER_FILE": str(counters.path), "PYTHONPATH": str(ROOT)}},
        "workflow": "refund-agent",
        "wait_seconds": 1,
        "tools": {
            "refund": {"action": "refund_customer", "parameters": ["order", "amount"]},
            "send_receipt": "send_receipt",
            "wire_money": {"action": "wire_money"},
            "explode": {"action": "send_receipt"},
        },
    }
    path = tmp_path / "gate.yaml"
    path.write_text(yaml.safe_dump(config))
    return command("gate", "--config", str(path), env=ringfence_env(live_server, agent))


def test_the_gate_shows_only_the_governed_tools(gate):
    async def scenario() -> set[str]:
        async with session(gate) as mcp:
            return {tool.name for tool in (await mcp.list_tools()).tools}

    assert asyncio.run(scenario()) == {"refund", "send_receipt", "wire_money", "explode"}


def test_a_denied_call_does_not_run_and_an_allowed_call_runs_once(gate, counters):
    async def scenario() -> None:
        async with session(gate) as mcp:
            denied = error_text(await mcp.call_tool("wire_money", {"account": "X-9"}))
            assert "denied by Ringfence" in denied and "did not run" in denied
            ran = await mcp.call_tool("send_receipt", {"order": "A-1"})
            assert ran.content[0].text == "receipt for A-1; run 1"
            hidden = error_text(await mcp.call_tool("read_counter", {"name": "refund"}))
            assert "unknown tool" in hidden
            failed = await mcp.call_tool("explode", {"order": "A-2"})
            assert failed.is_error and "could not process A-2" in failed.content[0].text

    asyncio.run(scenario())
    assert counters() == {"send_receipt": 1, "explode": 1}
    # send_receipt and explode are both the governed action send_receipt: one execution each.
    assert sorted(Execution.objects.values_list("state", flat=True)) == ["failed", "succeeded"]
    assert "could not process A-2" in Execution.objects.get(state="failed").detail


def test_a_pending_call_answers_pending_then_runs_once_when_approved(gate, counters, approver):
    async def scenario() -> int:
        async with session(gate) as mcp:
            args = {"order": "A-1", "amount": "40.00", "note": "damaged"}
            first = error_text(await mcp.call_tool("refund", args))
            assert first.startswith("pending, approval ")
            approval_id = int(first.split()[2].rstrip(":"))
            assert counters() == {}
            await asyncio.to_thread(decide, approval_id, approver, "approve")
            ran = await mcp.call_tool("refund", args)
            assert ran.content[0].text == "refunded 40.00 on A-1; run 1"
            # The same call again is a new intent: it asks anew and does not run on the used approval.
            again = error_text(await mcp.call_tool("refund", args))
            assert again.startswith("pending, approval ") and int(again.split()[2].rstrip(":")) != approval_id
            return approval_id

    approval_id = asyncio.run(scenario())
    assert counters() == {"refund": 1}
    approved = ApprovalRequest.objects.get(pk=approval_id)
    assert approved.parameters == {"order": "A-1", "amount": "40.00"}  # only the configured arguments
    assert approved.execution.state == "succeeded"
    assert ApprovalRequest.objects.count() == 2


def test_a_rejected_call_never_runs(gate, counters, approver):
    async def scenario() -> None:
        async with session(gate) as mcp:
            first = error_text(await mcp.call_tool("refund", {"order": "B-2", "amount": "900.00"}))
            await asyncio.to_thread(decide, int(first.split()[2].rstrip(":")), approver, "reject")
            refused = error_text(await mcp.call_tool("refund", {"order": "B-2", "amount": "900.00"}))
            assert "is rejected" in refused and "did not run" in refused

    asyncio.run(scenario())
    assert counters() == {}
    assert not Execution.objects.exists()


def test_a_call_approved_within_the_wait_runs_at_once(gate, counters, approver):
    async def scenario() -> str:
        async with session(gate) as mcp:
            async def person() -> None:
                while not await orm(lambda: ApprovalRequest.objects.filter(state="pending").exists()):
                    await asyncio.sleep(0.02)
                request = await orm(lambda: ApprovalRequest.objects.get(state="pending"))
                await asyncio.to_thread(decide, request.pk, approver, "approve")

            deciding = asyncio.create_task(person())
            result = await mcp.call_tool("refund", {"order": "C-3", "amount": "12.00"})
            await deciding
            return answer(result) if result.structured_content else result.content[0].text

    assert asyncio.run(scenario()) == "refunded 12.00 on C-3; run 1"
    assert counters() == {"refund": 1}


def test_a_gate_config_names_what_is_wrong():
    with pytest.raises(GateConfigError, match="server.command"):
        GateConfig.from_dict({"tools": {}})
    with pytest.raises(GateConfigError, match="tools.refund"):
        GateConfig.from_dict({"server": {"command": "x"}, "tools": {"refund": {"action": "refund_customer"}}})
    with pytest.raises(GateConfigError, match="unmapped"):
        GateConfig.from_dict({"server": {"command": "x"}, "unmapped": "maybe"})


def test_a_retry_with_a_changed_unlisted_argument_asks_anew_and_does_not_run_on_the_approval(gate, counters,
                                                                                              approver):
    async def scenario() -> tuple[int, str]:
        async with session(gate) as mcp:
            first = error_text(await mcp.call_tool("refund", {"order": "D-4", "amount": "40.00", "note": "damaged"}))
            approval_id = int(first.split()[2].rstrip(":"))
            await asyncio.to_thread(decide, approval_id, approver, "approve")
            # "note" is not shown to Ringfence; a retry that changes it is another call, never run on this approval.
            changed = error_text(await mcp.call_tool("refund", {"order": "D-4", "amount": "40.00", "note": "other"}))
            return approval_id, changed

    approval_id, changed = asyncio.run(scenario())
    assert changed.startswith("pending, approval ") and int(changed.split()[2].rstrip(":")) != approval_id
    assert counters() == {}
    assert ApprovalRequest.objects.count() == 2 and not Execution.objects.exists()
