"""Python clients for the Ringfence agent API: `RingfenceClient` (standard library only) and
`AsyncRingfenceClient` (asyncio, on httpx: `pip install ringfence[async]`; imported on first use,
so the sync client never needs httpx)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ringfence_client.client import RingfenceClient
from ringfence_client.guard import guarded
from ringfence_client.types import (
    Action,
    ApiError,
    Approval,
    ApprovalDecision,
    DecisionTimeout,
    Denied,
    DispatchResult,
    Execution,
    FieldProblem,
    NotExecuted,
    PendingApproval,
    ProposalResult,
    RingfenceError,
    Route,
    Rule,
    SignalsResult,
    TransportError,
    Workflow,
)

if TYPE_CHECKING:
    from ringfence_client.async_client import AsyncRingfenceClient

__all__ = [
    "Action", "ApiError", "Approval", "ApprovalDecision", "AsyncRingfenceClient", "DecisionTimeout", "Denied",
    "DispatchResult", "Execution", "FieldProblem", "NotExecuted", "PendingApproval", "ProposalResult",
    "RingfenceClient", "RingfenceError", "Route", "Rule", "SignalsResult", "TransportError", "Workflow", "guarded",
]


def __getattr__(name: str) -> Any:
    if name == "AsyncRingfenceClient":
        from ringfence_client.async_client import AsyncRingfenceClient

        return AsyncRingfenceClient
    raise AttributeError(f"module 'ringfence_client' has no attribute {name!r}")
