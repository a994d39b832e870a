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

`parameters` and `evidence` are values or functions of the call's arguments.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, Literal, TypeVar

from ringfence_client.types import (
    Approval,
    Denied,
    Execution,
    PendingApproval,
    RingfenceError,
    _new_key,
)

if TYPE_CHECKING:
    from ringfence_client.client import RingfenceClient

R = TypeVar("R")
Derived = Mapping[str, Any] | Callable[..., Mapping[str, Any]] | None
OnPending = Literal["wait", "raise"] | Callable[[Approval], Any]
MAX_DETAIL = 5000
logger = logging.getLogger("ringfence_client")


def _derive(value: Any, args: tuple, kwargs: dict) -> Any:
    return value(*args, **kwargs) if callable(value) else value


def _described(error: BaseException) -> str:
    text = str(error)
    return (f"{type(error).__name__}: {text}" if text else type(error).__name__)[:MAX_DETAIL]


def guarded(client: RingfenceClient, workflow: str, action: str, *, parameters: Derived = None,
            evidence: Derived = None, confidence: float | None = None, on_pending: OnPending = "wait",
            timeout: float = 600.0) -> Callable[[Callable[..., R]], Callable[..., R]]:
    if not callable(on_pending) and on_pending not in ("wait", "raise"):
        raise ValueError("on_pending is 'wait', 'raise' or a function of the pending approval")

    def granted(args: tuple, kwargs: dict) -> Execution:
        answer = client.dispatch(
            workflow, action, _derive(parameters, args, kwargs), evidence=_derive(evidence, args, kwargs),
            confidence=confidence, idempotency_key=_new_key(),
        )
        if answer.decision == "deny":
            raise Denied(answer.reason, dispatch=answer)
        if answer.decision == "allow":
            if answer.execution is None:
                raise RingfenceError(f"dispatch allowed {action} but granted no execution; nothing was run")
            return answer.execution
        if on_pending == "raise":
            raise PendingApproval(answer)
        approval_id = int(answer.approval_id)  # type: ignore[arg-type]
        deadline = time.monotonic() + timeout
        if callable(on_pending):
            approval = client.approval(approval_id)
            on_pending(approval)
            if approval.is_pending:
                approval = client.wait_for_decision(approval_id, timeout=max(0.0, deadline - time.monotonic()))
        else:
            approval = client.wait_for_decision(approval_id, timeout=timeout)
        if approval.outcome != "allow":
            raise Denied(f"approval {approval.id} is {approval.state}", dispatch=answer, approval=approval)
        return client.execute(approval_id)

    def report(execution: Execution, status: Literal["succeeded", "failed"], detail: str) -> None:
        try:
            client.report_outcome(execution.id, status, detail)
        except RingfenceError as error:
            logger.warning("could not report execution %s of %s as %s: %s", execution.id, action, status, error)

    def decorator(function: Callable[..., R]) -> Callable[..., R]:
        @functools.wraps(function)
        def wrapper(*args: Any, **kwargs: Any) -> R:
            execution = granted(args, kwargs)
            try:
                result = function(*args, **kwargs)
            except Exception as error:
                report(execution, "failed", _described(error))
                raise
            report(execution, "succeeded", "")
            return result

        return wrapper

    return decorator
