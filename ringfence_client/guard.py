"""Guard an agent's function behind dispatch: it runs only when Ringfence allows it.

    @rf.guard("refund-agent", "refund_customer",
              parameters=lambda order, amount: {"order": order, "amount": str(amount)},
              key=lambda order, amount: f"refund-{order}")
    def refund(order: str, amount: Decimal) -> None: ...

- allow → the function runs and its result is returned;
- deny → `Denied` is raised (the function does not run);
- pending → with `on_pending="wait"` (default) the call waits for the decision (up to
  `timeout` seconds, then `DecisionTimeout`) and runs the function once approved, or raises
  `Denied` when rejected, overridden, expired or cancelled; with `on_pending="raise"` it raises
  `PendingApproval` at once, carrying the approval id to check later.

`parameters`, `evidence` and `key` are values or functions of the call's arguments. A `key`
derived from the arguments makes a retried call (even from a restarted process) find the same
approval instead of asking again.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, Literal, TypeVar

from ringfence_client.client import Denied, PendingApproval

if TYPE_CHECKING:
    from ringfence_client.client import RingfenceClient

R = TypeVar("R")
Derived = Mapping[str, Any] | Callable[..., Mapping[str, Any]] | None


def _derive(value: Any, args: tuple, kwargs: dict) -> Any:
    return value(*args, **kwargs) if callable(value) else value


def guarded(client: RingfenceClient, workflow: str, action: str, *, parameters: Derived = None,
            evidence: Derived = None, confidence: float | None = None, key: str | Callable[..., str] | None = None,
            on_pending: Literal["wait", "raise"] = "wait", timeout: float = 600.0
            ) -> Callable[[Callable[..., R]], Callable[..., R]]:
    if on_pending not in ("wait", "raise"):
        raise ValueError("on_pending is 'wait' or 'raise'")

    def decorator(function: Callable[..., R]) -> Callable[..., R]:
        @functools.wraps(function)
        def wrapper(*args: Any, **kwargs: Any) -> R:
            answer = client.dispatch(
                workflow, action, _derive(parameters, args, kwargs), evidence=_derive(evidence, args, kwargs),
                confidence=confidence, idempotency_key=_derive(key, args, kwargs),
            )
            if answer.decision == "deny":
                raise Denied(answer.reason, dispatch=answer)
            if answer.decision == "pending":
                if on_pending == "raise":
                    raise PendingApproval(answer)
                approval = client.wait_for_decision(answer.approval_id, timeout=timeout)
                if approval.outcome != "allow":
                    raise Denied(f"approval {approval.id} is {approval.state}", dispatch=answer, approval=approval)
            return function(*args, **kwargs)

        return wrapper

    return decorator
