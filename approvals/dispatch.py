"""Dispatch: an agent asks "may I do this action now?" and gets allow, deny or pending.

The rule (README "Dispatch rule"), checked in this order:

1. The workflow is paused (kill switch) → deny.
2. The action is not declared for the workflow (GovernedAction) → deny.
3. The action's risk is at or below what the workflow's autonomy tier lets run unattended,
   where the tier is the one in force now (off-hours tier outside business hours) → allow:

       tier 1 (autonomous)  low, medium
       tier 2 (supervised)  low
       tier 3 (gated)       nothing

   High and critical actions always need a person.
4. Otherwise → pending: an approval request (gate mode, the action's quorum) is opened through
   `approvals.services.create_request`; the agent polls it or waits for it.

Every answer is audited: `dispatch.allowed`, `dispatch.denied`, or the request's
`approval.requested`. The answer is only returned once that is committed; a failure on the way
is an error (503), never `allow`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from django.db import connection, transaction

from approvals import services as approval_services
from approvals.models import ApprovalRequest
from governance import audit, clock
from governance.errors import TransitionRefused
from governance.models import GovernedAction, ServiceAccount, Workflow

RISKS = [r.value for r in GovernedAction.Risk]
# The riskiest action each autonomy tier runs without asking a person (None: nothing).
UNATTENDED_UP_TO: dict[int, str | None] = {1: "medium", 2: "low", 3: None}


def runs_unattended(tier: int, risk: str) -> bool:
    ceiling = UNATTENDED_UP_TO.get(tier)
    return ceiling is not None and RISKS.index(risk) <= RISKS.index(ceiling)


@dataclass(frozen=True)
class Answer:
    decision: str  # allow | deny | pending
    code: str
    reason: str
    workflow: Workflow
    action: str
    tier: int
    business_hours: bool
    risk: str | None = None
    approval: ApprovalRequest | None = None


@dataclass(frozen=True)
class Declared:
    """What the workflow's GovernedAction of that name says (read with the workflow)."""

    risk: str
    quorum: int


def _lock_shared(account: ServiceAccount, slug: str, action: str) -> tuple[Workflow, Declared | None]:
    """The account's workflow, read under a share lock, and the action declared for it, in one
    statement: a pause (FOR UPDATE) waits for dispatches in flight and every dispatch after a
    committed pause sees it; dispatches do not block each other. Outside the account's scope the
    workflow does not exist."""
    workflow = None
    if account.active:
        scope = ServiceAccount.workflows.through._meta.db_table
        lock = " FOR SHARE OF w" if connection.vendor == "postgresql" else ""
        workflow = next(iter(Workflow.objects.raw(
            f"SELECT w.*, a.risk AS action_risk, a.quorum AS action_quorum "
            f"FROM governance_workflow w JOIN {scope} s ON s.workflow_id = w.id "
            f"LEFT JOIN governance_governedaction a ON a.workflow_id = w.id AND a.name = %s "
            f"WHERE w.slug = %s AND s.serviceaccount_id = %s{lock}", [action, slug, account.pk])), None)
    if workflow is None:
        raise TransitionRefused("not_found", f"No workflow {slug!r} in this token's scope.")
    declared = Declared(workflow.action_risk, workflow.action_quorum) if workflow.action_risk else None
    return workflow, declared


@transaction.atomic(savepoint=False)  # a refusal rolls back the caller's transaction (or savepoint) whole
def dispatch(*, account: ServiceAccount, workflow: str, action: str, parameters: dict[str, Any],
             evidence: dict[str, Any], confidence: float | None = None, idempotency_key: str = "") -> Answer:
    """Decide whether `account` may run `action` on the workflow (slug) now; rule in the module docstring.

    Audit: `dispatch.allowed` / `dispatch.denied`, or `approval.requested` via create_request.
    """
    workflow, governed = _lock_shared(account, workflow, action)
    now = clock.now()
    business = workflow.in_business_hours(now)
    tier = workflow.tier_at(now)
    base = {"workflow": workflow, "action": action, "tier": tier, "business_hours": business}
    hours = "business hours" if business else "off hours"

    if workflow.paused:
        answer = Answer("deny", "paused", f"{workflow.slug} is paused: {workflow.paused_reason}", **base)
    elif governed is None:
        answer = Answer("deny", "unknown_action",
                        f"{action!r} is not an action declared for {workflow.slug}; ask its release manager to declare it.",
                        **base)
    elif runs_unattended(tier, governed.risk):
        answer = Answer("allow", "within_autonomy",
                        f"{governed.risk} risk runs without approval at tier {tier} ({hours}).", risk=governed.risk, **base)
    else:
        request = approval_services.create_request(
            workflow=workflow, kind=ApprovalRequest.Kind.AGENT_ACTION, action=action, parameters=parameters,
            evidence=evidence, requester=account, mode=ApprovalRequest.Mode.GATE, quorum=governed.quorum,
            idempotency_key=idempotency_key, confidence=confidence,
        )
        return Answer("pending", "approval_required",
                      f"{governed.risk} risk needs {governed.quorum} approval(s) at tier {tier} ({hours}).",
                      risk=governed.risk, approval=request, **base)

    audit.record(account, f"dispatch.{'allowed' if answer.decision == 'allow' else 'denied'}", workflow, data={
        "action": action, "parameters": parameters, "evidence": evidence, "confidence": confidence,
        "tier": tier, "business_hours": business, "risk": answer.risk, "code": answer.code,
        "idempotency_key": idempotency_key,
    }, reason=answer.reason)
    return answer
