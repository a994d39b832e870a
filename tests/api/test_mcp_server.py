"""Ringfence's MCP server, driven by the MCP SDK's own client over stdio against a live Ringfence:
ask, wait for a person, claim once, report."""

from __future__ import annotations

import asyncio
import json

import pytest
from mcp.shared.exceptions import MCPError

from approvals.models import ApprovalRequest, Execution
from tests.api.conftest import decide
from tests.api.mcp_helpers import answer, command, problem_of, ringfence_env, session

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def params(live_server, agent, actions, settings):
    settings.API_LONG_POLL_INTERVAL_SECONDS = 0.05
    return command(env=ringfence_env(live_server, agent))


def test_a_pending_action_is_approved_claimed_once_and_reported(params, approver):
    async def scenario() -> dict:
        async with session(params) as mcp:
            tools = {tool.name for tool in (await mcp.list_tools()).tools}
            assert tools == {"request_approval", "check_approval", "claim_execution", "report_outcome", "list_actions"}

            asked = answer(await mcp.call_tool("request_approval", {
                "workflow": "refund-agent", "action": "refund_customer", "parameters": {"order": "A-1"},
                "evidence": {"summary": "damaged parcel"}}))
            assert asked["decision"] == "pending" and asked["approval_id"]
            approval_id = asked["approval_id"]
            still = answer(await mcp.call_tool("check_approval", {"approval_id": approval_id, "wait_seconds": 0.2}))
            assert still["outcome"] == "pending"

            await asyncio.to_thread(decide, approval_id, approver, "approve")
            decided = answer(await mcp.call_tool("check_approval", {"approval_id": approval_id, "wait_seconds": 5}))
            assert decided["state"] == "approved" and decided["outcome"] == "allow"

            execution = answer(await mcp.call_tool("claim_execution", {"approval_id": approval_id}))
            assert execution["state"] == "granted"
            again = problem_of(await mcp.call_tool("claim_execution", {"approval_id": approval_id}))
            assert again["code"] == "already_executed" and again["status"] == 409 and "claimed" in again["detail"]

            reported = answer(await mcp.call_tool("report_outcome", {"execution_id": execution["id"],
                                                                     "status": "succeeded", "detail": "refunded"}))
            assert reported["state"] == "succeeded"
            return execution

    execution = asyncio.run(scenario())
    row = Execution.objects.get(pk=execution["id"])
    assert row.state == "succeeded" and row.request_id == ApprovalRequest.objects.get().pk
    assert ApprovalRequest.objects.get().state == "approved"


def test_refusals_are_tool_errors_with_the_problem_detail(params):
    async def scenario() -> None:
        async with session(params) as mcp:
            denied = answer(await mcp.call_tool("request_approval", {"workflow": "refund-agent",
                                                                     "action": "wire_money"}))
            assert denied["decision"] == "deny" and denied["code"] == "unknown_action"
            missing = problem_of(await mcp.call_tool("check_approval", {"approval_id": 999999}))
            assert missing["status"] == 404 and missing["code"] and missing["detail"]
            outsider = problem_of(await mcp.call_tool("list_actions", {"workflow": "payroll"}))
            assert outsider["code"] == "unknown_workflow"

    asyncio.run(scenario())
    assert not ApprovalRequest.objects.exists()


def test_resources_list_the_workflows_and_actions_the_token_may_use(params):
    async def scenario() -> tuple[list, list, list]:
        async with session(params) as mcp:
            listed = answer(await mcp.call_tool("list_actions", {}))
            workflows = json.loads((await mcp.read_resource("ringfence://workflows")).contents[0].text)
            actions = json.loads((await mcp.read_resource("ringfence://workflows/refund-agent/actions")).contents[0].text)
            with pytest.raises(MCPError):
                await mcp.read_resource("ringfence://workflows/payroll/actions")
            return listed, workflows, actions

    listed, workflows, actions = asyncio.run(scenario())
    assert [w["slug"] for w in workflows] == ["refund-agent"] == [w["slug"] for w in listed]
    names = {a["name"] for a in actions}
    assert names == {"send_receipt", "issue_credit", "refund_customer", "close_account"}
    assert {a["name"] for a in listed[0]["actions"]} == names


def test_the_server_also_speaks_streamable_http(params):
    import socket
    import subprocess
    import time

    from mcp import Client

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    process = subprocess.Popen([params.command, *params.args, "--http", str(port)], cwd=params.cwd, env=params.env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                assert time.monotonic() < deadline and process.poll() is None, "the HTTP server did not start"
                time.sleep(0.05)

        async def scenario() -> tuple[set[str], dict]:
            async with Client(f"http://127.0.0.1:{port}/mcp") as mcp:
                tools = {tool.name for tool in (await mcp.list_tools()).tools}
                allowed = answer(await mcp.call_tool("request_approval", {"workflow": "refund-agent",
                                                                          "action": "send_receipt"}))
                return tools, allowed

        tools, allowed = asyncio.run(scenario())
    finally:
        process.terminate()
        process.wait(timeout=10)
    assert "request_approval" in tools and allowed["decision"] == "allow"
    assert Execution.objects.get(pk=allowed["execution"]["id"]).state == "granted"
