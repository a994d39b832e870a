"""Agent and CI endpoints of the approval queue: dispatch, approval status, executions, cancel,
discovery of workflows and actions, pause."""

from __future__ import annotations

import time
from datetime import datetime
from typing import Annotated, Literal

from django.conf import settings
from django.http import HttpRequest
from django.shortcuts import get_object_or_404
from django.urls import reverse
from ninja import Path, Query, Router, Schema, Status
from pydantic import Field

from approvals import dispatch as dispatching
from approvals import executions
from approvals import services as approval_services
from approvals.models import ActionRule, ApprovalRequest, Execution
from core import clock
from core.api_schemas import Command, Finite, JsonObject, Text
from core.idempotency import header_value, idempotent
from governance import services as governance_services
from governance.api_auth import TOKEN_OR_SESSION, actor_of, service_account_of, workflows_in_scope
from governance.models import GovernedAction, slug_validator

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


def _execution_out(execution: Execution) -> ExecutionOut:
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


class DispatchOut(Schema):
    decision: Literal["allow", "deny", "pending"]
    code: str = Field(description="allowed_by_rule, within_autonomy, approval_required, denied_by_rule, rule_error, "
                                  "paused, unknown_action, fallback_read_only or fallback_manual_path.")
    reason: str
    workflow: str
    action: str
    tier: int = Field(description="The autonomy tier in force now.")
    business_hours: bool
    risk: str | None
    approval_id: int | None = Field(description="Set when pending: the request to poll.")
    poll_url: str | None
    due_at: datetime | None
    quorum: int | None = Field(None, description="When pending: the approvals it needs.")
    approver_roles: list[str] = Field(default_factory=list, description="When pending: roles that must be among "
                                                                        "the approvers.")
    rule: RuleOut | None = Field(None, description="The rule that decided, with the values it read; null when no "
                                                   "rule held and the tier decided.")
    execution: ExecutionOut | None = Field(None, description="On allow: the one execution it grants; report its "
                                                             "outcome.")


@router.post("/dispatch", response=DispatchOut, summary="May I do this action now?")
@idempotent(required=True)
def dispatch(request: HttpRequest, payload: DispatchIn) -> DispatchOut:
    """Answers `allow` (with the one execution it grants), `deny` or `pending` (with the approval to
    poll, then claim). The action's rules decide first (CEL over `params`, `evidence`, `agent`,
    `workflow`, `now`, `business_hours`, `tags`), the autonomy tier when none holds. Never `allow`
    on an error: a rule that cannot be decided for the call denies with `rule_error`."""
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
        due_at=approval.due_at if approval else None, quorum=approval.quorum if approval else None,
        approver_roles=approval.approver_roles if approval else [], rule=answer.rule,
        execution=_execution_out(answer.execution) if answer.execution else None,
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
    approver_roles: list[str]
    held: bool = Field(description="The workflow is paused: nobody decides it and its timers wait.")
    claim_by: datetime | None = Field(description="An approved agent action is claimed (execute) by then.")
    claim_expired: bool
    execution: ExecutionOut | None
    rule: RuleOut | None
    poll_url: str
    execute_url: str


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
        approver_roles=req.approver_roles, held=req.is_held, claim_by=req.claim_by,
        claim_expired=req.claim_expired_at is not None,
        execution=_execution_out(execution) if (execution := Execution.objects.filter(request=req).first()) else None,
        rule=req.rule or None, poll_url=poll_url(req.pk),
        execute_url=reverse("api:approval_execute", kwargs={"approval_id": req.pk}),
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


class ClaimOut(Schema):
    execution: ExecutionOut


@router.post("/approvals/{approval_id}/execute", response={201: ClaimOut}, url_name="approval_execute",
             summary="Claim the one execution an approval grants")
@idempotent(required=False)
def execute(request: HttpRequest, approval_id: Annotated[int, Path(ge=1, le=MAX_ID)]) -> Status:
    """Claim before running the approved action: 201 with the execution, once. A second claim is
    409 `already_executed`; also 409 `not_approved` (pending, rejected, expired…), `approval_expired`
    (not claimed within the window) or `paused` (the workflow's kill switch is engaged)."""
    execution = executions.claim(approval_id, account=service_account_of(request))
    return Status(201, ClaimOut(execution=_execution_out(execution)))


class OutcomeIn(Command):
    status: Literal["succeeded", "failed"]
    detail: Text = Field("", max_length=5000, description="What happened, for the people reading the record.")


@router.post("/executions/{execution_id}/outcome", response=ExecutionOut, url_name="execution_outcome",
             summary="Report what happened to an execution")
@idempotent(required=False)
def report_outcome(request: HttpRequest, execution_id: Annotated[int, Path(ge=1, le=MAX_ID)],
                   payload: OutcomeIn) -> ExecutionOut:
    """Once per execution. The same report again answers as the first did; a different one is 409
    `outcome_reported`."""
    reported = executions.report_outcome(execution_id, account=service_account_of(request), status=payload.status,
                                         detail=payload.detail)
    return _execution_out(reported.execution)


class CancelIn(Command):
    reason: Text = Field(min_length=1, max_length=5000, description="Why the request is withdrawn.")


@router.post("/approvals/{approval_id}/cancel", response=ApprovalOut, url_name="approval_cancel",
             summary="Withdraw your own pending request")
@idempotent(required=False)
def cancel(request: HttpRequest, approval_id: Annotated[int, Path(ge=1, le=MAX_ID)], payload: CancelIn) -> ApprovalOut:
    """Only the service account that asked may withdraw its request; 409 `not_pending` once decided."""
    account = service_account_of(request)
    get_object_or_404(ApprovalRequest.objects.filter(requested_by_service=account), pk=approval_id)
    req = approval_services.cancel_request(approval_id, actor=account, reason=payload.reason)
    return _approval_out(ApprovalRequest.objects.select_related("workflow").get(pk=req.pk))


class AgentWorkflowOut(Schema):
    slug: str
    name: str
    environment: str
    tier: int = Field(description="The autonomy tier in force now.")
    business_hours: bool
    paused: bool
    paused_reason: str
    actions_url: str


@router.get("/workflows", response=list[AgentWorkflowOut], summary="The workflows this token may ask for")
def list_workflows(request: HttpRequest) -> list[AgentWorkflowOut]:
    now = clock.now()
    return [
        AgentWorkflowOut(slug=w.slug, name=w.name, environment=w.environment, tier=w.tier_at(now),
                    business_hours=w.in_business_hours(now), paused=w.paused, paused_reason=w.paused_reason,
                    actions_url=reverse("api:workflow_actions", kwargs={"slug": w.slug}))
        for w in workflows_in_scope(request).order_by("slug")
    ]


class GovernedActionOut(Schema):
    name: str
    description: str
    risk: str
    quorum: int = Field(description="Approvals the tier rule asks for when it needs a person.")
    rules: list[str] = Field(description="The live rules in order, one line each: condition → outcome.")
    shadow_rules: list[str]


@router.get("/workflows/{slug}/actions", response=list[GovernedActionOut], url_name="workflow_actions",
            summary="The actions of a workflow, with their rules")
def list_actions(request: HttpRequest, slug: Annotated[str, Path(pattern=SLUG)]) -> list[GovernedActionOut]:
    workflow = get_object_or_404(workflows_in_scope(request), slug=slug)
    actions = GovernedAction.objects.filter(workflow=workflow).prefetch_related("rules").order_by("name")
    out = []
    for action in actions:
        rules: list[ActionRule] = sorted(action.rules.all(), key=lambda r: (r.shadow, r.position))
        out.append(GovernedActionOut(name=action.name, description=action.description, risk=action.risk,
                             quorum=action.quorum, rules=[r.summary() for r in rules if not r.shadow],
                             shadow_rules=[r.summary() for r in rules if r.shadow]))
    return out
