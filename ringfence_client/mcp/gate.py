"""The Ringfence gate: another MCP server's tools, each call asked of Ringfence first.

    python -m ringfence_client.mcp gate --config gate.yaml

    # gate.yaml
    server:                          # the wrapped MCP server, started as a stdio subprocess
      command: npx
      args: ["-y", "@acme/payments-mcp"]
      env: {PAYMENTS_KEY: "…"}       # added to a minimal environment (PATH, HOME, …)
    workflow: refund-agent           # the default workflow of the tools below
    wait_seconds: 20                 # how long one call waits on a pending approval
    unmapped: hide                   # tools not listed: hide (default) or pass (run ungoverned)
    tools:
      refund:                        # the wrapped server's tool name
        action: refund_customer      # the governed action it is
        parameters: [order, amount]  # which arguments Ringfence sees (default: all of them); the
                                     # others still reach the tool, unseen by Ringfence

A call is dispatched first: deny answers a tool error with the reason, allow runs the tool under
the execution it grants; pending waits up to `wait_seconds` and, if still pending, answers the
tool error "pending, approval N …": the host calls again with the same arguments, and the gate
checks that approval instead of asking anew (the gate keeps these links in memory: after a restart
the retry asks anew). The link is keyed by every argument, listed or not: a retry that changes any
of them is another call and asks anew, so the tool never runs with values other than the approved
call's. Approved, the gate claims the execution (a claim is granted once), calls the wrapped tool,
and reports its outcome (failed when the tool answered an error). RINGFENCE_URL and RINGFENCE_TOKEN
come from the environment, or `ringfence: {url, token}`.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import os
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import mcp_types as types
from mcp import ClientSession
from mcp.client.stdio import StdioServerParameters, stdio_client
from mcp.server.lowlevel import Server
from mcp.server.stdio import stdio_server

from ringfence_client.mcp.server import ask_quietly, client_from_env, make_client, problem
from ringfence_client.types import Approval, DecisionTimeout, Execution, RingfenceError

logger = logging.getLogger("ringfence_client")


class GateConfigError(ValueError):
    """The gate's configuration file is not usable; the message names the field."""


@dataclass
class GovernedTool:
    action: str
    workflow: str
    parameters: list[str] | None = None  # None: every argument

    def parameters_of(self, arguments: Mapping[str, Any]) -> dict[str, Any]:
        if self.parameters is None:
            return dict(arguments)
        return {name: arguments[name] for name in self.parameters if name in arguments}


@dataclass
class GateConfig:
    server: StdioServerParameters
    tools: dict[str, GovernedTool]
    wait_seconds: float = 20.0
    unmapped: str = "hide"
    url: str | None = None
    token: str | None = None

    @classmethod
    def load(cls, path: str | Path) -> GateConfig:
        text = Path(path).read_text(encoding="utf-8")
        try:
            import yaml

            raw = yaml.safe_load(text)
        except ImportError:  # YAML is a superset of JSON: without PyYAML, a JSON file still works
            raw = json.loads(text)
        return cls.from_dict(raw or {})

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> GateConfig:
        server = raw.get("server")
        if not isinstance(server, Mapping) or not server.get("command"):
            raise GateConfigError("server.command: the command that starts the wrapped MCP server is required")
        default_workflow = raw.get("workflow")
        tools: dict[str, GovernedTool] = {}
        for name, spec in (raw.get("tools") or {}).items():
            spec = {"action": spec} if isinstance(spec, str) else dict(spec or {})
            workflow = spec.get("workflow", default_workflow)
            if not spec.get("action") or not workflow:
                raise GateConfigError(f"tools.{name}: needs an action and a workflow (or a default workflow)")
            parameters = spec.get("parameters")
            if parameters is not None and not (isinstance(parameters, list) and all(isinstance(p, str)
                                                                                      for p in parameters)):
                raise GateConfigError(f"tools.{name}.parameters: a list of argument names")
            tools[str(name)] = GovernedTool(str(spec["action"]), str(workflow), parameters)
        unmapped = raw.get("unmapped", "hide")
        if unmapped not in ("hide", "pass"):
            raise GateConfigError("unmapped: hide or pass")
        ringfence = raw.get("ringfence") or {}
        return cls(
            server=StdioServerParameters(command=str(server["command"]), args=[str(a) for a in server.get("args", [])],
                                         env={str(k): str(v) for k, v in (server.get("env") or {}).items()} or None,
                                         cwd=server.get("cwd")),
            tools=tools, wait_seconds=float(raw.get("wait_seconds", 20.0)), unmapped=unmapped,
            url=ringfence.get("url"), token=ringfence.get("token"),
        )

    def client(self) -> Any:
        if self.url or self.token:
            return make_client(self.url or os.environ["RINGFENCE_URL"], self.token or os.environ["RINGFENCE_TOKEN"])
        return client_from_env()


def _digest(tool: str, parameters: Mapping[str, Any]) -> str:
    return hashlib.sha256(json.dumps([tool, parameters], sort_keys=True, default=str).encode()).hexdigest()


def _error(text: str) -> types.CallToolResult:
    return types.CallToolResult(content=[types.TextContent(type="text", text=text)], is_error=True)


def _text_of(result: types.CallToolResult) -> str:
    return " ".join(getattr(block, "text", "") for block in result.content)[:5000]


@dataclass
class Gate:
    """Calls of the wrapped server's tools, governed one by one."""

    config: GateConfig
    rf: Any  # RingfenceClient or AsyncRingfenceClient
    upstream: ClientSession
    tools: list[types.Tool] = field(default_factory=list)
    # Pending approvals by (tool, all arguments): only the host's retry of the very same call checks this one.
    pending: dict[str, int] = field(default_factory=dict)

    async def load_tools(self) -> None:
        cursor = None
        listed: list[types.Tool] = []
        while True:
            page = await self.upstream.list_tools(params=types.PaginatedRequestParams(cursor=cursor) if cursor
                                                  else None)
            listed.extend(page.tools)
            if not (cursor := page.next_cursor):
                break
        self.tools = [t for t in listed if t.name in self.config.tools or self.config.unmapped == "pass"]

    async def list_tools(self, ctx: Any, params: types.PaginatedRequestParams | None) -> types.ListToolsResult:
        return types.ListToolsResult(tools=self.tools)

    async def call_tool(self, ctx: Any, params: types.CallToolRequestParams) -> types.CallToolResult:
        arguments = dict(params.arguments or {})
        if params.name not in {t.name for t in self.tools}:
            return _error(f"unknown tool {params.name!r}")
        governed = self.config.tools.get(params.name)
        if governed is None:
            return await self.upstream.call_tool(params.name, arguments)
        try:
            execution = await self.granted(params.name, governed, arguments)
        except Refused as refused:
            return _error(str(refused))
        except RingfenceError as error:
            return _error(problem(error))
        try:
            result = await self.upstream.call_tool(params.name, arguments)
        except BaseException as error:  # failed or cancelled mid-call: the run may have happened
            await asyncio.shield(self.report(execution, "failed", f"{type(error).__name__}: {error}"))
            raise
        await self.report(execution, "failed" if result.is_error else "succeeded",
                          _text_of(result) if result.is_error else "")
        return result

    async def report(self, execution: Execution, status: str, detail: str) -> None:
        try:
            await ask_quietly(self.rf.report_outcome, execution.id, status, detail[:5000])
        except RingfenceError as error:  # the tool has run either way; Ringfence shows it unreported
            logger.warning("could not report execution %s as %s: %s", execution.id, status, error)

    async def granted(self, tool: str, governed: GovernedTool, arguments: Mapping[str, Any]) -> Execution:
        parameters = governed.parameters_of(arguments)
        key = _digest(tool, arguments)  # every argument: unlisted ones reach the tool too
        approval_id = self.pending.get(key)
        if approval_id is None:
            answer = await ask_quietly(self.rf.dispatch, governed.workflow, governed.action, parameters)
            if answer.decision == "deny":
                raise Refused(f"denied by Ringfence: {answer.reason} ({answer.code}); the tool did not run")
            if answer.decision == "allow":
                if answer.execution is None:
                    raise Refused(f"Ringfence allowed {governed.action} but granted no execution; the tool did not run")
                return answer.execution
            approval_id = int(answer.approval_id)  # type: ignore[arg-type]
            self.pending[key] = approval_id
        approval = await self.decision(approval_id)
        if approval.is_pending:
            raise Refused(f"pending, approval {approval_id}: {governed.action} waits for a person's decision "
                          f"(due {approval.due_at}); call again with the same arguments to run it once approved")
        self.pending.pop(key, None)  # a concurrent identical call may have taken it: its claim is refused
        if approval.outcome != "allow":
            raise Refused(f"approval {approval_id} is {approval.state}; the tool did not run")
        return await ask_quietly(self.rf.execute, approval_id)

    async def decision(self, approval_id: int) -> Approval:
        try:
            return await ask_quietly(self.rf.wait_for_decision, approval_id, timeout=self.config.wait_seconds,
                                     poll=min(self.config.wait_seconds, 25.0))
        except DecisionTimeout as timeout:
            return timeout.approval


class Refused(Exception):
    """The wrapped tool may not run now; the text is what the host and its model read."""


@asynccontextmanager
async def connected(config: GateConfig, rf: Any = None) -> AsyncIterator[Gate]:
    async with stdio_client(config.server) as (read, write), ClientSession(read, write) as upstream:
        await upstream.initialize()
        gate = Gate(config, rf or config.client(), upstream)
        await gate.load_tools()
        yield gate


async def run_gate(config: GateConfig) -> None:
    async with connected(config) as gate:
        server = Server("ringfence-gate", on_list_tools=gate.list_tools, on_call_tool=gate.call_tool)
        async with stdio_server() as (read, write):
            await server.run(read, write, server.create_initialization_options())
