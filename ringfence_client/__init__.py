"""Python client for the Ringfence agent API (standard library only)."""

from ringfence_client.client import (
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
    RingfenceClient,
    RingfenceError,
    Route,
    Rule,
    SignalsResult,
    TransportError,
    Workflow,
)
from ringfence_client.guard import guarded

__all__ = [
    "Action", "ApiError", "Approval", "ApprovalDecision", "DecisionTimeout", "Denied", "DispatchResult", "Execution",
    "FieldProblem", "NotExecuted", "PendingApproval", "ProposalResult", "RingfenceClient", "RingfenceError", "Route",
    "Rule", "SignalsResult", "TransportError", "Workflow", "guarded",
]
