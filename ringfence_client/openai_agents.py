"""Ringfence answers the OpenAI Agents SDK's tool approvals (the `openai-agents` extra).

    from agents import Agent
    from ringfence_client import AsyncRingfenceClient          # or RingfenceClient
    from ringfence_client.openai_agents import ringfence_tool, run

    rf = AsyncRingfenceClient.from_env()

    @ringfence_tool(rf, "refund-agent", "refund_customer")
    def refund(order: str, amount: str) -> str:
        "Refund an order."

    agent = Agent(name="support", tools=[refund])
    result = await run(agent, "Refund order A-1")   # waits on Ringfence (the tool's client) for each approval

`ringfence_tool` makes a `function_tool` whose `needs_approval` is a Ringfence dispatch: allow runs
the tool under the execution it grants, deny answers the model that it did not run, pending makes
the run stop with an interruption. `run` is `Runner.run` that resolves those interruptions by
waiting on Ringfence: `state.approve(item)` once a person approved, `state.reject(item)` otherwise,
then resumes. A resolved approval is claimed right before the tool runs (once: a second claim is
refused), and the tool's outcome is reported. Each tool call is one intent, keyed by its call id, so
a run resumed from a saved `RunState` in another process finds the same approval. A call without an
id is refused. An answer is used once: when the tool has run (or its approval was rejected), a later
call with the same id (call ids repeat across runs) is a new intent and dispatches anew, and an allow
replayed from an earlier call (e.g. by another process) is refused rather than run again. The SDK
gives the approval check no per-run object that survives a saved `RunState`, so the key holds none.
"""

from __future__ import annotations

import asyncio
import hashlib
import inspect
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from agents import Agent, FunctionTool, RunContextWrapper, Runner, RunResult, RunState, function_tool
from agents.items import ToolApprovalItem
from agents.tool_context import ToolContext

from ringfence_client.guard import granted_once
from ringfence_client.types import Approval, DispatchResult, Execution, RingfenceError

logger = logging.getLogger("ringfence_client")
Parameters = Callable[[Mapping[str, Any]], Mapping[str, Any]] | None


async def _ask(method: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """Call the sync client off the event loop, or await the async one."""
    if inspect.iscoroutinefunction(method):
        return await method(*args, **kwargs)
    return await asyncio.to_thread(method, *args, **kwargs)


def _call_id(raw: Any) -> Any:
    return raw.get("call_id") if isinstance(raw, Mapping) else getattr(raw, "call_id", None)


@dataclass
class Governed:
    """What a Ringfence tool asks for each call, and what it learnt, by tool call id."""

    client: Any
    workflow: str
    action: str
    parameters: Parameters = None
    evidence: Mapping[str, Any] | None = None
    answers: dict[str, DispatchResult] = field(default_factory=dict)
    # How many answers each call id has used up in this process: part of the key, so that a later
    # call with a repeated id asks anew instead of getting the used answer replayed.
    used: dict[str, int] = field(default_factory=dict)

    def key(self, call_id: str) -> str:
        identity = f"{self.workflow}\x1f{self.action}\x1f{call_id}\x1f{self.used.get(call_id, 0)}"
        return "openai-agents:" + hashlib.sha256(identity.encode()).hexdigest()

    def consume(self, call_id: str) -> None:
        """The call's answer is used (the tool ran or was refused): the next call with this id asks anew."""
        self.answers.pop(call_id, None)
        self.used[call_id] = self.used.get(call_id, 0) + 1

    async def dispatch(self, arguments: Mapping[str, Any], call_id: Any) -> DispatchResult:
        if not isinstance(call_id, str) or not call_id.strip():
            raise RingfenceError(f"a call of {self.action} without a tool call id is refused: it cannot be keyed")
        if call_id not in self.answers:
            params = dict(self.parameters(arguments) if self.parameters else arguments)
            self.answers[call_id] = await _ask(self.client.dispatch, self.workflow, self.action, params,
                                               evidence=self.evidence, idempotency_key=self.key(call_id))
        return self.answers[call_id]

    async def decision(self, call_id: Any, arguments: Mapping[str, Any], *, timeout: float,
                       poll: float) -> Approval:
        answer = await self.dispatch(arguments, call_id)
        return await _ask(self.client.wait_for_decision, int(answer.approval_id),  # type: ignore[arg-type]
                          timeout=timeout, poll=poll)

    async def granted(self, call_id: str, arguments: Mapping[str, Any]) -> Execution | str:
        """The execution to run under, or what to tell the model instead."""
        answer = await self.dispatch(arguments, call_id)
        self.consume(call_id)
        if answer.decision == "deny":
            return f"Ringfence denied {self.action}: {answer.reason}. It did not run."
        if (execution := granted_once(answer, self.action)) is not None:  # a replayed allow raises
            return execution
        approval = await _ask(self.client.approval, int(answer.approval_id))  # type: ignore[arg-type]
        if approval.outcome != "allow":
            return f"approval {approval.id} of {self.action} is {approval.state}. It did not run."
        return await _ask(self.client.execute, approval.id)

    async def report(self, execution: Execution, status: str, detail: str) -> None:
        try:
            await _ask(self.client.report_outcome, execution.id, status, detail[:5000])
        except RingfenceError as error:
            logger.warning("could not report execution %s of %s as %s: %s", execution.id, self.action, status, error)


def ringfence_tool(client: Any, workflow: str, action: str, *, parameters: Parameters = None,
                   evidence: Mapping[str, Any] | None = None,
                   **tool_options: Any) -> Callable[[Callable[..., Any]], FunctionTool]:
    """Decorator: a `function_tool` governed by Ringfence. `parameters` maps the tool's arguments to
    what Ringfence sees (default: all of them); other options go to `function_tool`."""
    governed = Governed(client, workflow, action, parameters, evidence)

    def decorator(function: Callable[..., Any]) -> FunctionTool:
        # Errors reach this wrapper (to be reported as failed) before the SDK's error formatter.
        formatter = tool_options.pop("failure_error_function", None)
        base = function_tool(function, failure_error_function=None, **tool_options)

        async def needs_approval(ctx: RunContextWrapper[Any], arguments: dict[str, Any], call_id: str) -> bool:
            return (await governed.dispatch(arguments, call_id)).decision == "pending"

        async def invoke(ctx: ToolContext[Any], raw_arguments: str) -> Any:
            import json

            arguments = json.loads(raw_arguments or "{}")
            try:
                granted = await governed.granted(ctx.tool_call_id, arguments)
            except RingfenceError as error:  # e.g. the one execution was already claimed: nothing runs
                return f"{action} did not run: {error}"
            if isinstance(granted, str):
                return granted
            try:
                result = await base.on_invoke_tool(ctx, raw_arguments)
            except asyncio.CancelledError as error:  # the run was cancelled: reported, never left granted
                await asyncio.shield(governed.report(granted, "failed", type(error).__name__))
                raise
            except Exception as error:
                await governed.report(granted, "failed", f"{type(error).__name__}: {error}")
                if formatter is None:
                    return f"{action} failed: {type(error).__name__}"
                return formatter(ctx, error)
            await governed.report(granted, "succeeded", "")
            return result

        tool = replace(base, on_invoke_tool=invoke, needs_approval=needs_approval)
        tool.ringfence = governed  # type: ignore[attr-defined]  # read by `resolve`
        return tool

    return decorator


def _governed_tools(agent: Agent[Any], seen: set[int] | None = None) -> dict[str, Governed]:
    seen = seen if seen is not None else set()
    if id(agent) in seen:
        return {}
    seen.add(id(agent))
    tools = {t.name: t.ringfence for t in agent.tools if hasattr(t, "ringfence")}
    for handoff in agent.handoffs:
        if isinstance(handoff, Agent):
            tools.update(_governed_tools(handoff, seen))
    return tools


async def resolve(agent: Agent[Any], state: RunState[Any], interruptions: list[ToolApprovalItem], *,
                  timeout: float = 600.0, poll: float = 25.0) -> None:
    """Approve or reject each interruption of a Ringfence tool as its approval closes (waits up to
    `timeout` seconds each; `DecisionTimeout` leaves the state as it was). Other tools' interruptions
    are left for the caller."""
    import json

    governed = _governed_tools(agent)
    for item in interruptions:
        gate = governed.get(item.tool_name or "")
        if gate is None:
            continue
        raw = item.raw_item
        arguments = json.loads((raw.get("arguments") if isinstance(raw, Mapping) else raw.arguments) or "{}")
        call_id = _call_id(raw)
        approval = await gate.decision(call_id, arguments, timeout=timeout, poll=poll)
        if approval.outcome == "allow":
            state.approve(item)
        else:
            gate.consume(call_id)  # the tool will not be invoked: its answer is used up here
            state.reject(item, rejection_message=f"Ringfence: approval {approval.id} of {gate.action} is "
                                                 f"{approval.state}. It did not run.")


async def run(agent: Agent[Any], input: Any, *, timeout: float = 600.0, poll: float = 25.0,
              **runner_options: Any) -> RunResult:
    """`Runner.run` whose Ringfence interruptions are resolved by waiting on Ringfence; returns once
    the run finishes or stops on an interruption that is not Ringfence's."""
    result = await Runner.run(agent, input, **runner_options)
    while result.interruptions:
        state = result.to_state()
        if any((i.tool_name or "") not in _governed_tools(agent) for i in result.interruptions):
            return result  # someone else's approval: the caller resolves it (and ours, with `resolve`)
        await resolve(agent, state, result.interruptions, timeout=timeout, poll=poll)
        result = await Runner.run(agent, state, **runner_options)
    return result
