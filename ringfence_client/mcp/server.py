"""The Ringfence MCP server: an agent host discovers and calls Ringfence as tools.

    RINGFENCE_URL=https://ringfence.example.com RINGFENCE_TOKEN=rf_… python -m ringfence_client.mcp
    python -m ringfence_client.mcp --http 8765          # streamable HTTP on 127.0.0.1:8765/mcp

Tools: `request_approval` (dispatch), `check_approval` (state, waiting at most `wait_seconds`),
`claim_execution`, `report_outcome`, `list_actions`. Resources: `ringfence://workflows` and
`ringfence://workflows/{slug}/actions`, what the token may use. A refused call is a tool error whose
text is the API's problem detail (JSON: status, code, title, detail, errors).

Built on the official SDK's `MCPServer` (mcp 2.x, the successor of the SDK's FastMCP).
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import json
import os
from collections.abc import Callable
from typing import Any, Literal

import anyio.to_thread
from mcp.server.mcpserver import MCPServer
from mcp.server.mcpserver.exceptions import ResourceError, ToolError

from ringfence_client.client import RingfenceClient
from ringfence_client.types import ApiError, RingfenceError

# Longest wait one `check_approval` holds the call open; agent hosts time tool calls out.
MAX_WAIT_SECONDS = float(os.environ.get("RINGFENCE_MCP_MAX_WAIT", "25"))


def client_from_env() -> Any:
    """A client for RINGFENCE_URL with RINGFENCE_TOKEN (the async one, which the SDK's httpx brings;
    the sync one otherwise); a clear error when either variable is missing."""
    missing = [name for name in ("RINGFENCE_URL", "RINGFENCE_TOKEN") if not os.environ.get(name)]
    if missing:
        raise SystemExit(f"set {' and '.join(missing)} to reach Ringfence")
    return make_client(os.environ["RINGFENCE_URL"], os.environ["RINGFENCE_TOKEN"])


def make_client(url: str, token: str) -> Any:
    try:
        from ringfence_client.async_client import AsyncRingfenceClient
    except ImportError:
        return RingfenceClient(url, token)
    return AsyncRingfenceClient(url, token)


def problem(error: RingfenceError) -> str:
    """An error as the text of an MCP tool error: the problem detail when the API refused."""
    if isinstance(error, ApiError):
        return json.dumps({"status": error.status, "code": error.code, "title": error.title, "detail": error.detail,
                           "errors": [dataclasses.asdict(e) for e in error.errors]})
    return json.dumps({"code": type(error).__name__, "detail": str(error)})


def plain(value: Any) -> Any:
    return dataclasses.asdict(value) if dataclasses.is_dataclass(value) and not isinstance(value, type) else value


async def ask_quietly(call: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """Await the async client's call, or run the sync client's off the event loop."""
    if inspect.iscoroutinefunction(call):
        return await call(*args, **kwargs)
    return await anyio.to_thread.run_sync(functools.partial(call, *args, **kwargs))


async def ask(call: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """A client call whose refusal is an MCP tool error carrying the problem detail."""
    try:
        return await ask_quietly(call, *args, **kwargs)
    except RingfenceError as error:
        raise ToolError(problem(error)) from error


def build_server(rf: Any) -> MCPServer:
    """`rf` is a RingfenceClient or an AsyncRingfenceClient."""
    server = MCPServer("ringfence", instructions=(
        "Ask Ringfence before a governed action: request_approval, then act only on allow, or once "
        "check_approval says allow and claim_execution granted the run; report_outcome afterwards."))

    @server.tool()
    async def request_approval(workflow: str, action: str, parameters: dict[str, Any] | None = None,
                               evidence: dict[str, Any] | None = None, confidence: float | None = None,
                               idempotency_key: str | None = None) -> dict[str, Any]:
        """Ask whether `action` of `workflow` may run with these parameters. `decision` is allow (with the
        one `execution` it grants), deny (with the reason), or pending (with `approval_id` to check).
        Pass the same idempotency_key only when asking again for the same intent."""
        answer = await ask(rf.dispatch, workflow, action, parameters, evidence=evidence, confidence=confidence,
                           idempotency_key=idempotency_key)
        return plain(answer)

    @server.tool()
    async def check_approval(approval_id: int, wait_seconds: float = 0) -> dict[str, Any]:
        """The approval request's state and `outcome` (allow, deny, pending). With wait_seconds, answers
        as soon as it closes, waiting at most that long (capped by the server)."""
        wait = max(0.0, min(float(wait_seconds), MAX_WAIT_SECONDS))
        return plain(await ask(rf.approval, approval_id, wait=wait))

    @server.tool()
    async def claim_execution(approval_id: int) -> dict[str, Any]:
        """Claim the one execution an approved request grants, right before acting. Refused (409) when
        already claimed, expired, paused or not approved: then do not act."""
        return plain(await ask(rf.execute, approval_id))

    @server.tool()
    async def report_outcome(execution_id: int, status: Literal["succeeded", "failed"],
                             detail: str = "") -> dict[str, Any]:
        """Say what happened to an execution (succeeded or failed), once."""
        return plain(await ask(rf.report_outcome, execution_id, status, detail))

    @server.tool()
    async def list_actions(workflow: str | None = None) -> list[dict[str, Any]]:
        """The workflows this token may ask for, each with its declared actions (risk, quorum, rules);
        only `workflow` when given."""
        workflows = await ask(rf.workflows)
        listed = []
        for flow in workflows:
            if workflow is None or flow.slug == workflow:
                listed.append({**plain(flow), "actions": [plain(a) for a in await ask(rf.actions, flow.slug)]})
        if workflow is not None and not listed:
            raise ToolError(json.dumps({"code": "unknown_workflow",
                                        "detail": f"this token may not ask for workflow {workflow!r}"}))
        return listed

    @server.resource("ringfence://workflows", name="workflows", mime_type="application/json",
                     description="The workflows this token may ask for: tier now, business hours, paused.")
    async def workflows_resource() -> str:
        return json.dumps([plain(w) for w in await read(rf.workflows)])

    @server.resource("ringfence://workflows/{slug}/actions", name="actions", mime_type="application/json",
                     description="The actions declared for one workflow, with their risk, quorum and rules.")
    async def actions_resource(slug: str) -> str:
        return json.dumps([plain(a) for a in await read(rf.actions, slug)])

    return server


async def read(call: Callable[..., Any], *args: Any) -> Any:
    try:
        return await ask_quietly(call, *args)
    except RingfenceError as error:
        raise ResourceError(problem(error)) from error


def serve(*, http_port: int | None = None, host: str = "127.0.0.1") -> None:
    server = build_server(client_from_env())
    if http_port is None:
        server.run("stdio")
    else:
        server.run("streamable-http", host=host, port=http_port)
