"""Agent and CI endpoints of the approval queue: dispatch, approval status, pause."""

from __future__ import annotations

from datetime import datetime

from django.http import HttpRequest
from django.shortcuts import get_object_or_404
from ninja import Router, Schema
from pydantic import ConfigDict, Field

from governance import services as governance_services
from governance.api_auth import TOKEN_OR_SESSION, actor_of, workflows_in_scope
from governance.idempotency import idempotent

router = Router(tags=["approvals"])


class Command(Schema):
    """Request bodies refuse unknown fields, so a typo is an error rather than a silent default."""

    model_config = ConfigDict(extra="forbid")


class PauseIn(Command):
    reason: str = Field(min_length=1, max_length=2000, description="Why the workflow is stopped; shown to its owners.")


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
