"""What an agent reads about an approval request: the JSON of `GET /api/v1/approvals/{id}` (and of
dispatch's execution), shared by the API and by the signed callback (approvals.callbacks), which
POSTs exactly the body that GET would answer."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Literal

from django.urls import reverse
from ninja import Schema
from ninja.responses import NinjaJSONEncoder
from pydantic import Field

from approvals.models import ApprovalRequest, Execution

# What an agent should do once a request is closed.
OUTCOME = {
    ApprovalRequest.State.PENDING: "pending",
    ApprovalRequest.State.APPROVED: "allow",
    ApprovalRequest.State.AUTO_APPROVED: "allow",
    ApprovalRequest.State.REJECTED: "deny",
    ApprovalRequest.State.OVERRIDDEN: "deny",
    ApprovalRequest.State.EXPIRED: "deny",
    ApprovalRequest.State.CANCELLED: "deny",
}


def poll_url(approval_id: int) -> str:
    return reverse("api:approval_status", kwargs={"approval_id": approval_id})


class ExecutionOut(Schema):
    id: int
    state: Literal["granted", "succeeded", "failed"]
    action: str
    approval_id: int | None = Field(description="The approval it was claimed on; null when dispatch allowed it.")
    granted_at: datetime
    expires_at: datetime = Field(description="Report the outcome by then.")
    reported_at: datetime | None
    detail: str
    outcome_url: str


def execution_out(execution: Execution) -> ExecutionOut:
    return ExecutionOut(
        id=execution.pk, state=execution.state, action=execution.action, approval_id=execution.request_id,
        granted_at=execution.granted_at, expires_at=execution.expires_at, reported_at=execution.reported_at,
        detail=execution.detail,
        outcome_url=reverse("api:execution_outcome", kwargs={"execution_id": execution.pk}),
    )


class RuleOut(Schema):
    id: int
    position: int = Field(description="0 for the first rule of the list.")
    shadow: bool
    condition: str = Field(description="The CEL condition.")
    outcome: Literal["allow", "deny", "approve", "tier"]
    reason: str
    quorum: int | None = None
    approver_roles: list[str] = Field(default_factory=list)
    values: dict = Field(default_factory=dict, description="The values of the call the condition read.")


class DecisionOut(Schema):
    verdict: str
    decided_by: str
    justification: str
    reason: str
    level: int
    decided_at: datetime


class ApprovalOut(Schema):
    id: int
    workflow: str
    kind: str
    action: str
    parameters: dict
    state: str
    outcome: Literal["allow", "deny", "pending"] = Field(description="What the requester should do now.")
    mode: str
    level: int = Field(description="Escalation level, 0 for the first.")
    quorum: int
    due_at: datetime
    created_at: datetime
    closed_at: datetime | None
    closed_by: str
    decisions: list[DecisionOut]
    approver_roles: list[str]
    held: bool = Field(description="The workflow is paused: nobody decides it and its timers wait.")
    claim_by: datetime | None = Field(description="An approved agent action is claimed (execute) by then.")
    claim_expired: bool
    execution: ExecutionOut | None
    rule: RuleOut | None
    poll_url: str
    execute_url: str


def approval_out(req: ApprovalRequest) -> ApprovalOut:
    """The request as the API shows it (`req` with its workflow; reads its decisions and execution)."""
    return ApprovalOut(
        id=req.pk, workflow=req.workflow.slug, kind=req.kind, action=req.action, parameters=req.parameters,
        state=req.state, outcome=OUTCOME[req.state], mode=req.mode, level=req.level, quorum=req.quorum,
        due_at=req.due_at, created_at=req.created_at, closed_at=req.closed_at, closed_by=req.closed_by_label,
        decisions=[
            DecisionOut(verdict=d.verdict, decided_by=d.decided_by.get_username(), justification=d.justification,
                        reason=d.reason, level=d.level, decided_at=d.decided_at)
            for d in req.decisions.select_related("decided_by")
        ],
        approver_roles=req.approver_roles, held=req.is_held, claim_by=req.claim_by,
        claim_expired=req.claim_expired_at is not None,
        execution=execution_out(execution) if (execution := Execution.objects.filter(request=req).first()) else None,
        rule=req.rule or None, poll_url=poll_url(req.pk),
        execute_url=reverse("api:approval_execute", kwargs={"approval_id": req.pk}),
    )


def approval_json(req: ApprovalRequest) -> bytes:
    """`approval_out(req)` encoded as the API encodes its answers (times to the millisecond, as
    GET shows them), with sorted keys and no spaces: the bytes a callback signs."""
    return json.dumps(approval_out(req).model_dump(), cls=NinjaJSONEncoder, sort_keys=True, separators=(",", ":"),
                      allow_nan=False).encode()
