"""What the Ringfence API answers, as typed values, and the errors the clients raise."""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

Decision = Literal["allow", "deny", "pending"]
JSON = dict[str, Any]

USER_AGENT = "ringfence-client/1"
RETRYABLE_STATUSES = frozenset({429, 502, 503, 504})
# 409 codes of a refused claim: the approval grants nothing (more) to run.
CLAIM_REFUSALS = frozenset({"already_executed", "approval_expired", "paused", "not_approved"})


class RingfenceError(Exception):
    """Base of every error the client raises."""


@dataclass
class FieldProblem:
    location: str
    field: str
    message: str
    type: str = ""


class ApiError(RingfenceError):
    """The server refused the call: RFC 9457 problem details (status, stable code, field errors)."""

    def __init__(self, status: int, code: str, title: str, detail: str, errors: list[FieldProblem] | None = None,
                 retry_after: float | None = None) -> None:
        super().__init__(f"{status} {code}: {detail}")
        self.status, self.code, self.title, self.detail = status, code, title, detail
        self.errors = errors or []
        self.retry_after = retry_after


class TransportError(RingfenceError):
    """The server could not be reached (or kept failing) within the retry budget."""


class NotExecuted(ApiError):
    """The server refused to claim an approval's execution (409): `code` is `already_executed`,
    `approval_expired`, `paused` or `not_approved`. Nothing may run under this approval now."""

    def __init__(self, error: ApiError, approval_id: int) -> None:
        super().__init__(error.status, error.code, error.title, error.detail, error.errors, error.retry_after)
        self.approval_id = approval_id


class DecisionTimeout(RingfenceError):
    def __init__(self, approval: Approval) -> None:
        super().__init__(f"approval {approval.id} is still pending")
        self.approval = approval
        self.approval_id = approval.id


class Denied(RingfenceError):
    """Dispatch answered deny, or the approval closed without permission."""

    def __init__(self, reason: str, *, dispatch: DispatchResult | None = None,
                 approval: Approval | None = None) -> None:
        super().__init__(reason)
        self.reason, self.dispatch, self.approval = reason, dispatch, approval
        self.approval_id = approval.id if approval else (dispatch.approval_id if dispatch else None)


class PendingApproval(RingfenceError):
    """Dispatch answered pending and the caller chose not to wait."""

    def __init__(self, dispatch: DispatchResult) -> None:
        super().__init__(f"approval {dispatch.approval_id} is pending: {dispatch.reason}")
        self.dispatch = dispatch
        self.approval_id = dispatch.approval_id


def _pick(cls: type, data: Mapping[str, Any]) -> dict[str, Any]:
    names = cls.__dataclass_fields__  # type: ignore[attr-defined]
    return {k: v for k, v in data.items() if k in names}


class _FromJson:
    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Any:
        """Build from an API answer, ignoring fields this client version does not know."""
        return cls(**_pick(cls, data))


def _optional(cls: Any, data: Any) -> Any:
    return cls.from_json(data) if isinstance(data, Mapping) else None


@dataclass
class Execution(_FromJson):
    """The one run of an action that an allow, or a claimed approval, grants; report its outcome
    (`succeeded` or `failed`) by `expires_at`."""

    id: int
    state: Literal["granted", "succeeded", "failed"]
    action: str
    approval_id: int | None
    granted_at: str
    expires_at: str
    reported_at: str | None = None
    detail: str = ""
    outcome_url: str = ""


@dataclass
class Rule(_FromJson):
    """The rule that decided a dispatch, with the values of the call its condition read."""

    id: int
    position: int
    shadow: bool
    condition: str
    outcome: str
    reason: str = ""
    quorum: int | None = None
    approver_roles: list[str] = field(default_factory=list)
    values: JSON = field(default_factory=dict)


@dataclass
class DispatchResult:
    decision: Decision
    code: str
    reason: str
    workflow: str
    action: str
    tier: int
    business_hours: bool
    risk: str | None = None
    approval_id: int | None = None
    poll_url: str | None = None
    due_at: str | None = None
    quorum: int | None = None
    approver_roles: list[str] = field(default_factory=list)
    rule: Rule | None = None
    execution: Execution | None = None
    replayed: bool = False

    @classmethod
    def from_json(cls, data: Mapping[str, Any], replayed: bool = False) -> DispatchResult:
        fields = _pick(cls, data)
        fields["rule"] = _optional(Rule, data.get("rule"))
        fields["execution"] = _optional(Execution, data.get("execution"))
        return cls(**fields, replayed=replayed)


@dataclass
class ApprovalDecision:
    verdict: str
    decided_by: str
    justification: str
    reason: str
    level: int
    decided_at: str


@dataclass
class Approval:
    id: int
    workflow: str
    kind: str
    action: str
    state: str
    outcome: Decision
    mode: str
    level: int
    quorum: int
    due_at: str
    created_at: str
    closed_at: str | None = None
    closed_by: str = ""
    parameters: JSON = field(default_factory=dict)
    decisions: list[ApprovalDecision] = field(default_factory=list)
    approver_roles: list[str] = field(default_factory=list)
    held: bool = False
    claim_by: str | None = None
    claim_expired: bool = False
    execution: Execution | None = None
    rule: Rule | None = None
    poll_url: str = ""
    execute_url: str = ""

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Approval:
        fields = _pick(cls, data)
        fields["decisions"] = [ApprovalDecision(**_pick(ApprovalDecision, d)) for d in data.get("decisions", [])]
        fields["execution"] = _optional(Execution, data.get("execution"))
        fields["rule"] = _optional(Rule, data.get("rule"))
        return cls(**fields)

    @property
    def is_pending(self) -> bool:
        return self.outcome == "pending"


@dataclass
class SignalsResult(_FromJson):
    plan: int
    received: int
    stored: int
    duplicates: int
    evaluation: str = ""


@dataclass
class ProposalResult(_FromJson):
    id: int
    plan: int
    kind: str
    state: str
    handling: str
    created: bool
    tier: int | None = None
    approval_id: int | None = None
    poll_url: str | None = None
    plan_state: str = ""
    context_tag: JSON | None = None


@dataclass
class Route(_FromJson):
    workflow: str
    version: str | None
    mode: str
    exposed: bool
    exposure_percent: int
    workflow_paused: bool
    plan: int | None = None
    state: str | None = None
    ring: int | None = None


@dataclass
class Workflow(_FromJson):
    """A workflow the token may ask for, as it stands now."""

    slug: str
    name: str
    environment: str
    tier: int
    business_hours: bool
    paused: bool
    paused_reason: str = ""
    actions_url: str = ""


@dataclass
class Action(_FromJson):
    """An action declared for a workflow, with its rules (one line each: condition → outcome)."""

    name: str
    description: str
    risk: str
    quorum: int
    rules: list[str] = field(default_factory=list)
    shadow_rules: list[str] = field(default_factory=list)


def _new_key() -> str:
    return str(uuid.uuid4())
