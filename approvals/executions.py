"""Executions: one approval, or one allow, buys one execution of exactly the call that was asked.

    dispatch → allow                      grant()          (audited in `dispatch.allowed`)
    approved request → agent claims it    claim()          `execution.claimed`
    agent reports what happened           report_outcome() `execution.succeeded` / `execution.failed`
    nobody claimed it in time             expire_unclaimed() `approval.claim_expired`

A request is claimable once: approved (or auto-approved), an agent action, asked by this service
account, before its `claim_by`, and its workflow not paused. The request row is locked for the
claim and `Execution.request` is unique, so of any number of concurrent claims exactly one wins.
An outcome is reported once; the same report again answers as the first did, another is refused.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from approvals.models import ApprovalRequest, Execution, ExecutionState, Kind, State
from audit import log as audit
from core import clock
from core.errors import TransitionRefused, require
from governance.models import ServiceAccount, Workflow

logger = logging.getLogger(__name__)
AUDIT_ACTIONS = ("execution.claimed", "execution.succeeded", "execution.failed", "approval.claim_expired")
CLAIMABLE = frozenset({State.APPROVED, State.AUTO_APPROVED})
MAX_DETAIL = 5000
SWEEP_ACTOR = "system:timer"


def window() -> timedelta:
    return timedelta(seconds=settings.APPROVAL_EXECUTION_WINDOW_SECONDS)


def claim_deadline(req: ApprovalRequest, closed_at: datetime) -> datetime | None:
    """When an approved request stops being claimable (None: nothing to claim, e.g. a rollback,
    which Ringfence carries out itself)."""
    if req.kind != Kind.AGENT_ACTION or req.state not in CLAIMABLE:
        return None
    return closed_at + window()


def grant(*, workflow: Workflow, action: str, digest: str, account: ServiceAccount, now: datetime) -> Execution:
    """The execution an `allow` carries; inside dispatch's transaction, audited by its event."""
    return Execution.objects.create(workflow=workflow, action=action, parameters_digest=digest,
                                    service_account=account, granted_at=now, expires_at=now + window())


def parameters_digest(parameters: dict[str, Any]) -> str:
    """The digest of a call's parameters an execution is bound to (canonical JSON, SHA-256)."""
    canonical = json.dumps(parameters, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def _when(at: datetime) -> str:
    return timezone.localtime(at).strftime("%H:%M:%S")


@transaction.atomic
def claim(request_id: int, *, account: ServiceAccount) -> Execution:
    """Claim the one execution an approved request grants. Refused with 409 `not_approved`,
    `already_executed`, `approval_expired` or `paused`; 404 outside the account's requests."""
    req = (ApprovalRequest.objects.select_for_update(of=("self",)).select_related("workflow")
           .filter(pk=request_id, requested_by_service=account).first())
    require(req is not None and account.active, "not_found", "No approval request of this service account has this id.")
    require(req.kind == Kind.AGENT_ACTION, "not_approved",
            "Only agent actions are claimed; Ringfence carries out rollout actions itself.")
    existing = Execution.objects.filter(request=req).first()
    if existing is not None:
        raise TransitionRefused("already_executed", f"This approval was already claimed at "
                                f"{_when(existing.granted_at)} (execution {existing.pk}, {existing.state}); "
                                "one approval buys one execution. Ask again for another.")
    require(not req.is_pending, "not_approved", "This request is still pending; wait for its decision.")
    require(req.state in CLAIMABLE, "not_approved", f"This request was not approved: {req.outcome_summary()}")
    workflow = req.workflow
    require(not workflow.paused, "paused", f"{workflow.slug} is paused ({workflow.paused_reason}); nothing of it "
            "runs until it is resumed.")
    now = clock.now()
    expired = req.claim_expired_at is not None or (req.claim_by is not None and req.claim_by <= now)
    require(not expired, "approval_expired", f"This approval expired unclaimed at {_when(req.claim_by)}; ask again.")
    execution = Execution.objects.create(
        workflow=workflow, action=req.action, parameters_digest=parameters_digest(req.parameters), request=req,
        service_account=account, granted_at=now, expires_at=now + window())
    req.claimed_at = now
    req.save(update_fields=["claimed_at"])
    audit.record(account, "execution.claimed", req, data={
        "execution": execution.pk, "action": req.action, "parameters_digest": execution.parameters_digest,
        "expires_at": execution.expires_at})
    return execution


@dataclass(frozen=True)
class Reported:
    execution: Execution
    replayed: bool


@transaction.atomic
def report_outcome(execution_id: int, *, account: ServiceAccount, status: str, detail: str = "") -> Reported:
    """Record what happened to a granted execution, once. The same report again is answered as the
    first (`replayed`); a different one is 409 `outcome_reported`. Audit: `execution.<status>`."""
    execution = (Execution.objects.select_for_update(of=("self",)).select_related("request")
                 .filter(pk=execution_id, service_account=account).first())
    require(execution is not None and account.active, "not_found", "No execution of this service account has this id.")
    require(status in (ExecutionState.SUCCEEDED, ExecutionState.FAILED), "invalid",
            "The status is succeeded or failed.", field="status")
    detail = (detail or "").strip()
    require(len(detail) <= MAX_DETAIL, "invalid", f"Keep the detail under {MAX_DETAIL:,} characters.", field="detail")
    if not execution.is_granted:
        if execution.state == status and execution.detail == detail:
            return Reported(execution, True)
        raise TransitionRefused("outcome_reported", f"This execution was already reported {execution.state} at "
                                f"{_when(execution.reported_at)}; an outcome is reported once.")
    execution.state, execution.detail, execution.reported_at = status, detail, clock.now()
    execution.save(update_fields=["state", "detail", "reported_at"])
    audit.record(account, f"execution.{status}", execution.request or execution, workflow=execution.workflow,
                 data={"execution": execution.pk, "action": execution.action, "status": status},
                 reason=detail)
    return Reported(execution, False)


def expire_unclaimed(limit: int = 200) -> int:
    """The sweep: approved agent actions nobody claimed by their deadline expire, one transaction
    each (SKIP LOCKED: a claim in progress wins or loses on its own). Returns how many expired."""
    expired = 0
    while expired < limit:
        with transaction.atomic():
            req = (ApprovalRequest.objects.unclaimed(clock.now()).order_by("claim_by")
                   .select_for_update(of=("self",), skip_locked=True).first())
            if req is None:
                break
            req.claim_expired_at = clock.now()
            req.save(update_fields=["claim_expired_at"])
            audit.record(SWEEP_ACTOR, "approval.claim_expired", req, data={"claim_by": req.claim_by})
        expired += 1
    return expired
