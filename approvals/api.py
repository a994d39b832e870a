"""Agent and CI endpoints of the approval queue: dispatch, approval status, executions, cancel,
discovery of workflows and actions, pause."""

from __future__ import annotations

import time
from datetime import datetime
from typing import Annotated, Literal

from asgiref.sync import sync_to_async
from django.conf import settings
from django.db import transaction
from django.http import HttpRequest
from django.shortcuts import get_object_or_404
from django.urls import reverse
from ninja import Path, Query, Router, Schema, Status
from pydantic import AfterValidator, Field

from approvals import callbacks, executions, waiting
from approvals import dispatch as dispatching
from approvals import services as approval_services
from approvals.models import ActionRule, ApprovalRequest
from approvals.representations import ApprovalOut, ExecutionOut, RuleOut, poll_url
from approvals.representations import approval_out as _approval_out
from approvals.representations import execution_out as _execution_out
from core import clock, metrics
from core.api_schemas import Command, Finite, JsonObject, Text
from core.idempotency import header_value, idempotent
from governance import services as governance_services
from governance.api_auth import TOKEN_OR_SESSION, actor_of, service_account_of, workflows_in_scope
from governance.models import GovernedAction, slug_validator

router = Router(tags=["approvals"])

SLUG = slug_validator.regex.pattern
MAX_ID = 2**63 - 1


def _callback_url(url: str) -> str:
    if (problem := callbacks.url_problem(url)) is not None:
        raise ValueError(problem)
    return url


class DispatchIn(Command):
    workflow: str = Field(pattern=SLUG, description="Slug of the workflow the agent acts for.")
    action: str = Field(pattern=SLUG, description="Name of the action, as declared for the workflow.")
    parameters: JsonObject = Field(default_factory=dict)
    evidence: JsonObject = Field(default_factory=dict)
    confidence: Annotated[Finite, Field(ge=0, le=1)] | None = None
    callback_url: Annotated[str, AfterValidator(_callback_url)] | None = Field(
        None, max_length=callbacks.MAX_URL,
        description="When the answer is pending: an http(s) URL that Ringfence POSTs the approval's JSON to, "
                    "signed, once the request closes (see the README's API section). Then there is no need to wait.")


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
    on an error: a rule that cannot be decided for the call denies with `rule_error`. With
    `callback_url`, a pending answer's outcome is also POSTed there, signed, when it closes."""
    started = time.perf_counter()
    with transaction.atomic(savepoint=False):  # the callback is registered with the request, or neither is
        answer = dispatching.dispatch(
            account=service_account_of(request), workflow=payload.workflow, action=payload.action,
            parameters=payload.parameters, evidence=payload.evidence, confidence=payload.confidence,
            idempotency_key=header_value(request) or "",
        )
        if payload.callback_url and answer.approval is not None:
            callbacks.register(answer.approval, url=payload.callback_url, token=request.auth)
    metrics.observe_dispatch(answer.workflow.slug, answer.decision, answer.code,
                             str((answer.rule or {}).get("id", "")), time.perf_counter() - started)
    approval = answer.approval
    return DispatchOut(
        decision=answer.decision, code=answer.code, reason=answer.reason, workflow=answer.workflow.slug,
        action=answer.action, tier=answer.tier, business_hours=answer.business_hours, risk=answer.risk,
        approval_id=approval.pk if approval else None, poll_url=poll_url(approval.pk) if approval else None,
        due_at=approval.due_at if approval else None, quorum=approval.quorum if approval else None,
        approver_roles=approval.approver_roles if approval else [], rule=answer.rule,
        execution=_execution_out(answer.execution) if answer.execution else None,
    )


@router.get("/approvals/{approval_id}", response=ApprovalOut, auth=TOKEN_OR_SESSION, url_name="approval_status",
            summary="State of an approval request, optionally waiting for a decision")
async def approval_status(
    request: HttpRequest,
    approval_id: Annotated[int, Path(ge=1, le=MAX_ID)],
    wait: Annotated[Finite, Query(0, ge=0, le=60, description="Seconds to wait while the request is pending "
                                                           "(long-poll; capped by the server).")] = 0,
) -> ApprovalOut:
    """State, decisions, due time and level. With `wait`, answers as soon as the request closes."""
    seconds = min(wait, settings.API_LONG_POLL_MAX_SECONDS)
    read = sync_to_async(_visible_approval)
    if seconds <= 0:
        return await read(request, approval_id, release=False)
    # Waits in the event loop, holding no worker and no database connection (approvals.waiting).
    return await waiting.wait_while_pending(approval_id, lambda: read(request, approval_id, release=True),
                                            lambda out: out.state == ApprovalRequest.State.PENDING, seconds)


def _visible_approval(request: HttpRequest, approval_id: int, *, release: bool) -> ApprovalOut:
    requests = ApprovalRequest.objects.select_related("workflow").filter(workflow__in=workflows_in_scope(request))
    approval = _approval_out(get_object_or_404(requests, pk=approval_id))
    if release:
        waiting.release_connection()
    return approval


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
