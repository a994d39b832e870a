"""Python client for the Ringfence agent API (standard library only)."""

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

__all__ = [
    "Action", "ApiError", "Approval", "ApprovalDecision", "DecisionTimeout", "Denied", "DispatchResult", "Execution",
    "FieldProblem", "NotExecuted", "PendingApproval", "ProposalResult", "RingfenceClient", "RingfenceError", "Route",
    "Rule", "SignalsResult", "TransportError", "Workflow", "guarded",
]
