"""Guard an agent's function behind Ringfence: it runs only under an execution Ringfence granted,
and what happened is reported.

    @rf.guard("refund-agent", "refund_customer",
              parameters=lambda order, amount: {"order": order, "amount": str(amount)})
    def refund(order: str, amount: Decimal) -> None: ...

Each call of the guarded function is one intent: it asks again, with an Idempotency-Key made for
that call and reused only by that call's retries. Two €400 refunds to the same customer are two
requests, two approvals and two runs; a lost answer retried by the client is still one.

1. dispatch: deny → `Denied`; allow → the execution the answer grants; pending → by `on_pending`:
   - "wait" (default): wait for the decision, at most `timeout` seconds, then `DecisionTimeout`;
   - a function: called once with the pending `Approval` (to log, store or show its id), then wait;
   - "raise": raise `PendingApproval` at once.
   Closed without approval (rejected, overridden, expired, cancelled) → `Denied`.
2. approved → claim its execution (`RingfenceClient.execute`). A refused claim raises
   `NotExecuted` (an `ApiError`, 409, `code` already_executed, approval_expired, paused or
   not_approved) and the function does not run.
3. the function runs. When it returns, the execution is reported `succeeded`; when it raises, it
   is reported `failed` with the exception's type and text, and the exception propagates. A report
   that cannot be delivered is logged (logger "ringfence_client") and changes nothing for the
   caller: the action has happened either way.

`Denied`, `PendingApproval`, `DecisionTimeout` and `NotExecuted` carry `approval_id` (None when no
request was opened). To resume an intent after a restart, keep that id and use
`wait_for_decision(approval_id)` then `execute(approval_id)`: a claim is granted once, so the
resumed run never acts twice.

`parameters` and `evidence` are values or functions of the call's arguments. By default the
parameters are all of the call's arguments by name, positional or keyword, defaults applied
(`call_arguments`), so a rule on `amount` sees `refund("A-9", "400")`'s amount; they must be JSON
values, or pass `parameters` to say what Ringfence sees.

An `async def` function is guarded as well: with `AsyncRingfenceClient.guard` the calls to
Ringfence are awaited (and `on_pending` may be `async def` too); with `RingfenceClient.guard` they
run in a worker thread (`asyncio.to_thread`). The async client's guard always gives an `async def`
wrapper: a plain function guarded by it is awaited too. The steps above are written once
(`_steps`) and driven by either client.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import json
import logging
import time
from collections.abc import Callable, Generator, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, TypeVar, cast

from ringfence_client.types import (
    ApiError,
    Approval,
    Denied,
    DispatchResult,
    Execution,
    NotExecuted,
    PendingApproval,
    RingfenceError,
    _new_key,
)

if TYPE_CHECKING:
    from ringfence_client.async_client import AsyncRingfenceClient
    from ringfence_client.client import RingfenceClient

R = TypeVar("R")
Derived = Mapping[str, Any] | Callable[..., Mapping[str, Any]] | None
OnPending = Literal["wait", "raise"] | Callable[[Approval], Any]
MAX_DETAIL = 5000
logger = logging.getLogger("ringfence_client")


def derive(value: Any, args: tuple, kwargs: dict) -> Any:
    return value(*args, **kwargs) if callable(value) else value


def call_arguments(function: Callable[..., Any], args: tuple, kwargs: dict) -> dict[str, Any]:
    """The default parameters: the call's arguments by parameter name, positional or keyword, with
    the defaults applied (a `**kwargs` parameter's entries are merged in). Raises TypeError for
    arguments that do not fit the signature or are not JSON values: nothing is dispatched."""
    bound = inspect.signature(function).bind(*args, **kwargs)
    bound.apply_defaults()
    arguments: dict[str, Any] = {}
    for name, value in bound.arguments.items():
        if bound.signature.parameters[name].kind is inspect.Parameter.VAR_KEYWORD:
            arguments.update(value)
        else:
            arguments[name] = list(value) if isinstance(value, tuple) else value
    try:
        json.dumps(arguments, allow_nan=False)
    except (TypeError, ValueError) as error:
        raise TypeError(f"the arguments of {getattr(function, '__name__', function)!r} are not all JSON values "
                        f"({error}); pass parameters= to say what Ringfence sees") from None
    return arguments


def _described(error: BaseException) -> str:
    text = str(error)
    return (f"{type(error).__name__}: {text}" if text else type(error).__name__)[:MAX_DETAIL]


@dataclass(frozen=True)
class _Step:
    """One thing the guard needs done: a client method (by name) or the caller's `on_pending`."""

    target: str | Callable[..., Any]
    args: tuple[Any, ...] = ()
    kwargs: dict[str, Any] = field(default_factory=dict)

    def perform(self, client: Any) -> Any:
        target = getattr(client, self.target) if isinstance(self.target, str) else self.target
        return target(*self.args, **self.kwargs)


Steps = Generator[_Step, Any, Execution]


def granted_at_once(answer: DispatchResult, action: str) -> Execution | None:
    """The execution an `allow` grants; raises Denied on `deny`; None while pending."""
    if answer.decision == "deny":
        raise Denied(answer.reason, dispatch=answer)
    if answer.decision == "allow":
        if answer.execution is None:
            raise RingfenceError(f"dispatch allowed {action} but granted no execution; nothing was run")
        return answer.execution
    return None


def granted_once(answer: DispatchResult, action: str) -> Execution | None:
    """`granted_at_once` for adapters that derive the Idempotency-Key from the call (a graph node re-run
    on resume, an agent's tool call id), so that another invocation of the same call gets the same
    answer. A replayed allow is the grant of an earlier invocation, which may already have run under
    it: raises NotExecuted rather than run again. A replayed pending is the resume path and is kept."""
    execution = granted_at_once(answer, action)
    if execution is not None and answer.replayed:
        detail = (f"{action} was already allowed once for this call (execution {execution.id}) and may have run; "
                  "it is not run again")
        raise NotExecuted(ApiError(409, "already_executed", "Already allowed", detail),
                          answer.approval_id)  # type: ignore[arg-type]
    return execution


def _steps(workflow: str, action: str, *, parameters: Derived, evidence: Derived, confidence: float | None,
           on_pending: OnPending, timeout: float, function: Callable[..., Any], args: tuple, kwargs: dict) -> Steps:
    """Dispatch, wait while pending, claim: yields what to do, returns the execution to run under."""
    params = derive(parameters, args, kwargs) if parameters is not None else call_arguments(function, args, kwargs)
    answer: DispatchResult = yield _Step("dispatch", (workflow, action, params), {
        "evidence": derive(evidence, args, kwargs), "confidence": confidence, "idempotency_key": _new_key()})
    if (execution := granted_at_once(answer, action)) is not None:
        return execution
    if on_pending == "raise":
        raise PendingApproval(answer)
    approval_id = int(answer.approval_id)  # type: ignore[arg-type]
    deadline = time.monotonic() + timeout
    if callable(on_pending):
        approval: Approval = yield _Step("approval", (approval_id,))
        yield _Step(on_pending, (approval,))
        if approval.is_pending:
            approval = yield _Step("wait_for_decision", (approval_id,),
                                   {"timeout": max(0.0, deadline - time.monotonic())})
    else:
        approval = yield _Step("wait_for_decision", (approval_id,), {"timeout": timeout})
    if approval.outcome != "allow":
        raise Denied(f"approval {approval.id} is {approval.state}", dispatch=answer, approval=approval)
    return (yield _Step("execute", (approval_id,)))


def _drive(client: RingfenceClient, steps: Steps) -> Execution:
    step = next(steps)
    while True:
        outcome = step.perform(client)
        if inspect.isawaitable(outcome):
            getattr(outcome, "close", lambda: None)()
            raise TypeError("an async on_pending needs AsyncRingfenceClient.guard")
        try:
            step = steps.send(outcome)
        except StopIteration as done:
            return done.value


async def _drive_async(client: AsyncRingfenceClient, steps: Steps) -> Execution:
    step = next(steps)
    while True:
        outcome = step.perform(client)
        if inspect.isawaitable(outcome):
            outcome = await outcome
        try:
            step = steps.send(outcome)
        except StopIteration as done:
            return done.value


def _undelivered(execution: Execution, action: str, status: str, error: RingfenceError) -> None:
    logger.warning("could not report execution %s of %s as %s: %s", execution.id, action, status, error)


def guarded(client: RingfenceClient | AsyncRingfenceClient, workflow: str, action: str, *,
            parameters: Derived = None, evidence: Derived = None, confidence: float | None = None,
            on_pending: OnPending = "wait", timeout: float = 600.0) -> Callable[[Callable[..., R]], Callable[..., R]]:
    if not callable(on_pending) and on_pending not in ("wait", "raise"):
        raise ValueError("on_pending is 'wait', 'raise' or a function of the pending approval")
    native_async = inspect.iscoroutinefunction(client.dispatch)

    def steps(function: Callable[..., Any], args: tuple, kwargs: dict) -> Steps:
        return _steps(workflow, action, parameters=parameters, evidence=evidence, confidence=confidence,
                      on_pending=on_pending, timeout=timeout, function=function, args=args, kwargs=kwargs)

    def report(execution: Execution, status: Literal["succeeded", "failed"], detail: str) -> None:
        try:
            cast("RingfenceClient", client).report_outcome(execution.id, status, detail)
        except RingfenceError as error:
            _undelivered(execution, action, status, error)

    async def report_async(execution: Execution, status: Literal["succeeded", "failed"], detail: str) -> None:
        try:
            await cast("AsyncRingfenceClient", client).report_outcome(execution.id, status, detail)
        except RingfenceError as error:
            _undelivered(execution, action, status, error)

    def decorator(function: Callable[..., R]) -> Callable[..., R]:
        if native_async:
            @functools.wraps(function)
            async def awaited(*args: Any, **kwargs: Any) -> Any:
                execution = await _drive_async(cast("AsyncRingfenceClient", client), steps(function, args, kwargs))
                try:
                    result = function(*args, **kwargs)
                    if inspect.isawaitable(result):
                        result = await result
                except BaseException as error:  # cancelled too: reported, never left granted until it expires
                    await asyncio.shield(report_async(execution, "failed", _described(error)))
                    raise
                await report_async(execution, "succeeded", "")
                return result

            return cast("Callable[..., R]", awaited)

        if inspect.iscoroutinefunction(function):
            @functools.wraps(function)
            async def threaded(*args: Any, **kwargs: Any) -> Any:
                execution = await asyncio.to_thread(_drive, cast("RingfenceClient", client),
                                                    steps(function, args, kwargs))
                try:
                    result = await function(*args, **kwargs)
                except BaseException as error:  # cancelled too: reported, never left granted until it expires
                    await asyncio.shield(asyncio.to_thread(report, execution, "failed", _described(error)))
                    raise
                await asyncio.to_thread(report, execution, "succeeded", "")
                return result

            return cast("Callable[..., R]", threaded)

        @functools.wraps(function)
        def wrapper(*args: Any, **kwargs: Any) -> R:
            execution = _drive(cast("RingfenceClient", client), steps(function, args, kwargs))
            try:
                result = function(*args, **kwargs)
            except BaseException as error:  # KeyboardInterrupt too: reported, never left granted
                report(execution, "failed", _described(error))
                raise
            report(execution, "succeeded", "")
            return result

        return wrapper

    return decorator
