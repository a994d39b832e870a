"""Ringfence in a LangGraph graph (the `langgraph` extra): a guarded tool that `interrupt()`s while a
person decides, and a resumer that resumes the graph with the decision.

    from ringfence_client import RingfenceClient
    from ringfence_client.langgraph import guarded, resume

    rf = RingfenceClient.from_env()

    @tool                                    # langchain_core.tools.tool, for a ToolNode; or call it in a node
    @guarded(rf, "refund-agent", "refund_customer")
    def refund(order: str, amount: str) -> str: ...

    graph = builder.compile(checkpointer=InMemorySaver())      # interrupts need a checkpointer
    result = graph.invoke(inputs, config)                       # pending: result["__interrupt__"] says so
    result = resume(graph, config, rf)                          # waits for the person, then runs refund once

A call dispatches first. Deny raises `Denied`; allow runs the function under the execution it grants;
pending calls `interrupt()` with {"ringfence": "approval", "approval_id", "poll_url", "reason",
"workflow", "action", "parameters"}. `resume` (or `resume_from_callback`, with a signed callback from
`callbacks.py`) resumes with the decision; the node re-runs, asks again with the same
Idempotency-Key (derived from the thread, the task and the call, so it gets the same approval
rather than a new one), claims the execution (once: a second resume finds it claimed and raises
`NotExecuted`), runs the function and reports its outcome. A graph re-runs a node from its start on
resume, so keep one guarded call per node or per tool call, as LangGraph advises for side effects.
An allowed call that re-runs (e.g. beside a pending one in the same `ToolNode` step, whose interrupt
discards its result) gets the first allow replayed: it may have run, so it raises `NotExecuted`
rather than run again.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

from langgraph.config import get_config
from langgraph.types import Command, Interrupt, interrupt

from ringfence_client.callbacks import verify_callback
from ringfence_client.client import RingfenceClient
from ringfence_client.guard import Derived, call_arguments, derive, granted_once
from ringfence_client.types import Approval, Denied, Execution, RingfenceError

R = TypeVar("R")
INTERRUPT_KIND = "approval"
logger = logging.getLogger("ringfence_client")


def _call_key(workflow: str, action: str, parameters: Mapping[str, Any]) -> str:
    """The same for a node's re-run after a resume, different for every other task or call."""
    configurable = get_config().get("configurable", {})
    identity = [str(configurable.get("thread_id", "")), str(configurable.get("checkpoint_ns", "")), workflow, action,
                json.dumps(parameters, sort_keys=True, default=str)]
    return "langgraph:" + hashlib.sha256("\x1f".join(identity).encode("utf-8")).hexdigest()


def guarded(client: RingfenceClient, workflow: str, action: str, *, parameters: Derived = None,
            evidence: Derived = None, confidence: float | None = None,
            callback_url: str | None = None) -> Callable[[Callable[..., R]], Callable[..., R]]:
    """Decorator for a function called inside a graph node (directly or as a tool of a ToolNode).
    `parameters` and `evidence` are values or functions of the call's arguments; by default the
    parameters are all of the call's arguments by name, positional or keyword, defaults applied
    (as for the client's guard). With `callback_url`, Ringfence POSTs the decision
    there: hand it to `resume_from_callback`."""

    def granted(function: Callable[..., Any], args: tuple, kwargs: dict) -> Execution:
        params = dict(derive(parameters, args, kwargs) if parameters is not None
                      else call_arguments(function, args, kwargs))
        key = _call_key(workflow, action, params)
        answer = client.dispatch(workflow, action, params, evidence=derive(evidence, args, kwargs),
                                 confidence=confidence, idempotency_key=key, callback_url=callback_url)
        if (execution := granted_once(answer, action)) is not None:
            return execution
        approval_id = int(answer.approval_id)  # type: ignore[arg-type]
        decision = interrupt({"ringfence": INTERRUPT_KIND, "approval_id": approval_id, "poll_url": answer.poll_url,
                              "reason": answer.reason, "workflow": workflow, "action": action, "parameters": params})
        if not isinstance(decision, Mapping) or decision.get("approval_id") != approval_id:
            raise RingfenceError(f"resumed with {decision!r}, not the decision of approval {approval_id}")
        if decision.get("outcome") != "allow":
            raise Denied(f"approval {approval_id} is {decision.get('state')}", dispatch=answer)
        return client.execute(approval_id)  # a fresh key: a second resume is refused, never replayed

    def decorator(function: Callable[..., R]) -> Callable[..., R]:
        @functools.wraps(function)
        def wrapper(*args: Any, **kwargs: Any) -> R:
            execution = granted(function, args, kwargs)
            try:
                result = function(*args, **kwargs)
            except BaseException as error:  # KeyboardInterrupt too: reported, never left granted
                _report(client, execution, "failed", f"{type(error).__name__}: {error}"[:5000])
                raise
            _report(client, execution, "succeeded", "")
            return result

        return wrapper

    return decorator


def _report(client: RingfenceClient, execution: Execution, status: Any, detail: str) -> None:
    try:
        client.report_outcome(execution.id, status, detail)
    except RingfenceError as error:
        logger.warning("could not report execution %s as %s: %s", execution.id, status, error)


def decision_of(approval: Approval) -> dict[str, Any]:
    """What the guarded call is resumed with."""
    return {"approval_id": approval.id, "state": approval.state, "outcome": approval.outcome}


def pending_approvals(graph: Any, config: Mapping[str, Any]) -> list[Interrupt]:
    """The graph's open interrupts that wait on a Ringfence approval (value["approval_id"])."""
    return [i for i in graph.get_state(config).interrupts
            if isinstance(i.value, Mapping) and i.value.get("ringfence") == INTERRUPT_KIND]


def resume(graph: Any, config: Mapping[str, Any], client: RingfenceClient, *, timeout: float = 600.0,
           poll: float = 25.0) -> Any:
    """Wait (long-polling) for the decision of each approval the thread is interrupted on, then resume
    the graph with them; returns what `graph.invoke` returns. Raises `DecisionTimeout` after
    `timeout` seconds, leaving the graph interrupted (call again later)."""
    waiting = pending_approvals(graph, config)
    if not waiting:
        raise ValueError("the graph is not interrupted on a Ringfence approval")
    decisions = {i.id: decision_of(client.wait_for_decision(i.value["approval_id"], timeout=timeout, poll=poll))
                 for i in waiting}
    return graph.invoke(Command(resume=decisions), config)


def resume_with(graph: Any, config: Mapping[str, Any], approval: Approval) -> Any:
    """Resume the graph with one closed approval (e.g. from a callback); the other interrupts stay."""
    if approval.is_pending:
        raise ValueError(f"approval {approval.id} is still pending")
    for waiting in pending_approvals(graph, config):
        if waiting.value["approval_id"] == approval.id:
            return graph.invoke(Command(resume={waiting.id: decision_of(approval)}), config)
    raise ValueError(f"the graph is not interrupted on approval {approval.id}")


def resume_from_callback(graph: Any, config: Mapping[str, Any], token: str, headers: Mapping[str, str],
                         body: bytes) -> Any:
    """Resume the graph from a Ringfence callback (dispatched with `callback_url=`), once its signature
    checks out with `token` (raises `callbacks.InvalidCallback` otherwise). The caller maps the
    approval id in the interrupt to the graph's `config` (thread) when it sees the interrupt."""
    return resume_with(graph, config, verify_callback(token, headers, body))
