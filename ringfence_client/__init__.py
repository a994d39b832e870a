"""Python client for the Ringfence agent API (standard library only)."""

from ringfence_client.client import (
    ApiError,
    Approval,
    ApprovalDecision,
    DecisionTimeout,
    Denied,
    DispatchResult,
    FieldProblem,
    PendingApproval,
    ProposalResult,
    RingfenceClient,
    RingfenceError,
    Route,
    SignalsResult,
    TransportError,
)
from ringfence_client.guard import guarded

__all__ = [
    "ApiError", "Approval", "ApprovalDecision", "DecisionTimeout", "Denied", "DispatchResult", "FieldProblem",
    "PendingApproval", "ProposalResult", "RingfenceClient", "RingfenceError", "Route", "SignalsResult",
    "TransportError", "guarded",
]
