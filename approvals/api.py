"""Agent and CI endpoints of the approval queue: dispatch, approval status, pause."""

from __future__ import annotations

import time
from datetime import datetime
from typing import Annotated, Literal

from django.conf import settings
from django.http import HttpRequest
from django.shortcuts import get_object_or_404
from django.urls import reverse
from ninja import Path, Query, Router, Schema
from pydantic import Field

from approvals import dispatch as dispatching
from approvals.models import ApprovalRequest
from governance import services as governance_services
from governance.api_auth import TOKEN_OR_SESSION, actor_of, service_account_of, workflows_in_scope
from governance.api_schemas import Command, Finite, JsonObject, Text
from governance.idempotency import header_value, idempotent
from governance.models import slug_validator

router = Router(tags=["approvals"])

SLUG = slug_validator.regex.pattern
MAX_ID = 2**63 - 1
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


class DispatchIn(Command):
    workflow: str = Field(pattern=SLUG, description="Slug of the workflow the agent acts for.")
    action: str = Field(pattern=SLUG, description="Name of the action, as declared for the workflow.")
    parameters: JsonObject = Field(default_factory=dict)
    evidence: JsonObject = Field(default_factory=dict)
    confidence: Annotated[Finite, Field(ge=0, le=1)] | None = None


class DispatchOut(Schema):
    decision: Literal["allow", "deny", "pending"]
    code: str = Field(description="within_autonomy, paused, unknown_action or approval_required.")
    reason: str
    workflow: str
    action: str
    tier: int = Field(description="The autonomy tier in force now.")
    business_hours: bool
    risk: str | None
    approval_id: int | None = Field(description="Set when pending: the request to poll.")
    poll_url: str | None
    due_at: datetime | None


@router.post("/dispatch", response=DispatchOut, summary="May I do this action now?")
@idempotent(required=True)
def dispatch(request: HttpRequest, payload: DispatchIn) -> DispatchOut:
    """Answers `allow`, `deny` or `pending` (with the approval to poll). Never `allow` on an error."""
    answer = dispatching.dispatch(
        account=service_account_of(request), workflow=payload.workflow, action=payload.action,
        parameters=payload.parameters, evidence=payload.evidence, confidence=payload.confidence,
        idempotency_key=header_value(request) or "",
    )
    approval = answer.approval
    return DispatchOut(
        decision=answer.decision, code=answer.code, reason=answer.reason, workflow=answer.workflow.slug,
        action=answer.action, tier=answer.tier, business_hours=answer.business_hours, risk=answer.risk,
        approval_id=approval.pk if approval else None, poll_url=poll_url(approval.pk) if approval else None,
        due_at=approval.due_at if approval else None,
    )


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
    poll_url: str


def _approval_out(req: ApprovalRequest) -> ApprovalOut:
    return ApprovalOut(
        id=req.pk, workflow=req.workflow.slug, kind=req.kind, action=req.action, parameters=req.parameters,
        state=req.state, outcome=OUTCOME[req.state], mode=req.mode, level=req.level, quorum=req.quorum,
        due_at=req.due_at, created_at=req.created_at, closed_at=req.closed_at, closed_by=req.closed_by_label,
        decisions=[
            DecisionOut(verdict=d.verdict, decided_by=d.decided_by.get_username(), justification=d.justification,
                        reason=d.reason, level=d.level, decided_at=d.decided_at)
            for d in req.decisions.select_related("decided_by")
        ],
        poll_url=poll_url(req.pk),
    )


@router.get("/approvals/{approval_id}", response=ApprovalOut, auth=TOKEN_OR_SESSION, url_name="approval_status",
            summary="State of an approval request, optionally waiting for a decision")
def approval_status(
    request: HttpRequest,
    approval_id: Annotated[int, Path(ge=1, le=MAX_ID)],
    wait: Annotated[Finite, Query(0, ge=0, le=60, description="Seconds to wait while the request is pending "
                                                           "(long-poll; capped by the server).")] = 0,
) -> ApprovalOut:
    """State, decisions, due time and level. With `wait`, answers as soon as the request closes."""
    requests = ApprovalRequest.objects.select_related("workflow").filter(workflow__in=workflows_in_scope(request))
    deadline = time.monotonic() + min(wait, settings.API_LONG_POLL_MAX_SECONDS)
    req = get_object_or_404(requests, pk=approval_id)
    while req.is_pending and (remaining := deadline - time.monotonic()) > 0:
        time.sleep(min(settings.API_LONG_POLL_INTERVAL_SECONDS, remaining))
        req = get_object_or_404(requests, pk=approval_id)
    return _approval_out(req)


class PauseIn(Command):
    reason: Text = Field(min_length=1, max_length=2000, description="Why the workflow is stopped; shown to its owners.")


class WorkflowStateOut(Schema):
    slug: str
    paused: bool
    paused_reason: str
    paused_at: datetime | None


@router.post("/workflows/{slug}/pause", response=WorkflowStateOut, auth=TOKEN_OR_SESSION,
             summary="Engage a workflow's kill switch")
@idempotent(required=False)
def pause_workflow(request: HttpRequest, slug: str, payload: PauseIn) -> WorkflowStateOut:
    """Every dispatch of the workflow is denied until a person resumes it. 409 when already paused."""
    workflow = get_object_or_404(workflows_in_scope(request), slug=slug)
    workflow = governance_services.pause_workflow(workflow.pk, actor=actor_of(request), reason=payload.reason)
    return WorkflowStateOut.model_validate(workflow, from_attributes=True)
