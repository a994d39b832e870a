"""How rules, dispatch answers and executions read to a person, one line each. Shared by the
request page, the action page and the evidence bundle, so the three say the same thing.

Nothing here writes; `rule_line` may read the escalation policy a rule names.
"""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass

from django.utils import timezone

from approvals.dispatch import runs_unattended
from approvals.executions import CLAIMABLE
from approvals.models import ActionRule, ApprovalRequest, Execution, ExecutionState, Kind
from governance.models import GovernedAction

ABSENT = "<absent>"
TIERS = (1, 2, 3)


def clock_time(at: dt.datetime, tz: dt.tzinfo | None = None) -> str:
    return timezone.localtime(at, tz).strftime("%H:%M:%S")


def _rule_from(data: dict) -> ActionRule:
    return ActionRule(condition=data.get("condition", ""), outcome=data.get("outcome", ""),
                      reason=data.get("reason") or "", quorum=data.get("quorum"),
                      approver_roles=data.get("approver_roles") or [], policy_id=data.get("policy"),
                      position=data.get("position") or 0, shadow=bool(data.get("shadow")))


def rule_line(rule: ActionRule | dict) -> str:
    """`Rule 2: double(params.amount) <= 5000.0 → approve by 1` (a rule, or the data a request or
    an audit event kept of it)."""
    if isinstance(rule, dict):
        rule = _rule_from(rule)
    return f"{'Shadow rule' if rule.shadow else 'Rule'} {rule.number}: {rule.summary()}"


def values_read(rule: dict) -> list[str]:
    """The call's values the rule read: `params.amount = 400`, `params.country = "FR"`."""
    values = rule.get("values") or {}
    return [f"{path} was absent" if value == ABSENT else f"{path} = {json.dumps(value, ensure_ascii=False)}"
            for path, value in values.items()]


def answer_line(answer: dict) -> str:
    """A dispatch answer kept by a shadow difference: `needs 2 approvals incl. senior_approver (rule 2)`,
    `allow (no rule: the tier decided)`."""
    decision = answer.get("decision", "?")
    if decision == "pending":
        quorum = answer.get("quorum") or 1
        text = f"needs {quorum} approval{'s' if quorum != 1 else ''}"
        if answer.get("approver_roles"):
            text += " incl. " + " and ".join(answer["approver_roles"])
    else:
        text = decision
    rule = answer.get("rule")
    return f"{text} (rule {rule})" if rule else f"{text} (no rule: the tier decided)"


def tier_line(action: GovernedAction) -> str:
    """What the tier rule says of the action, for when no live rule holds (or one says "use the
    tier"): `high risk always needs 1 approval`."""
    unattended = [tier for tier in TIERS if runs_unattended(tier, action.risk)]
    needs = f"needs {action.quorum} approval{'s' if action.quorum != 1 else ''}"
    if not unattended:
        return f"{action.risk} risk always {needs}"
    gated = [tier for tier in TIERS if tier not in unattended]
    return f"{action.risk} risk runs without approval at {_tiers(unattended)}; at {_tiers(gated)} it {needs}"


def _tiers(tiers: list[int]) -> str:
    return f"tier{'s' if len(tiers) > 1 else ''} {' and '.join(str(t) for t in tiers)}"


@dataclass(frozen=True)
class ExecutionStatus:
    """Where an approved agent action stands: waiting to be claimed, claimed, reported, expired."""

    state: str  # waiting | overdue | expired | claimed | succeeded | failed
    text: str
    hint: str = ""
    execution: Execution | None = None


def execution_status(req: ApprovalRequest, execution: Execution | None, now: dt.datetime) -> ExecutionStatus | None:
    """None when there is nothing to execute (not an approved agent action)."""
    if execution is not None:
        if execution.state == ExecutionState.GRANTED:
            return ExecutionStatus("claimed", f"Claimed at {clock_time(execution.granted_at)}, no outcome reported yet",
                                   f"The agent should report what happened by {clock_time(execution.expires_at)}.",
                                   execution)
        text = f"Executed {clock_time(execution.granted_at)} · {execution.state}"
        if execution.detail:
            text += f": {execution.detail}"
        return ExecutionStatus(execution.state, text, f"Outcome reported at {clock_time(execution.reported_at)}.",
                               execution)
    if req.kind != Kind.AGENT_ACTION or req.state not in CLAIMABLE:
        return None
    if req.claim_expired_at is not None:
        by = f" by {clock_time(req.claim_by)}" if req.claim_by else ""
        return ExecutionStatus("expired", f"Expired unclaimed at {clock_time(req.claim_expired_at)}",
                               f"The agent did not claim it{by}; it has to ask again.")
    if req.claim_by is None:
        return None
    paused = " Its workflow is paused: nothing can be claimed until it is resumed." if req.workflow.paused else ""
    if req.claim_by <= now:
        return ExecutionStatus("overdue", f"Not claimed by {clock_time(req.claim_by)}",
                               "It expires unclaimed at the next sweep." + paused)
    return ExecutionStatus("waiting", f"Claim by {clock_time(req.claim_by)}",
                           "The agent claims the approved call once, then runs it; unclaimed by then, the approval "
                           "expires." + paused)


def execution_timeline(req: ApprovalRequest, execution: Execution | None, tz: dt.tzinfo | None = None) -> str:
    """`approved by Alice 10:02 · executed 10:02:07 · succeeded`."""
    if req.is_pending:
        return "pending"
    by = f" by {req.closed_by_label}" if req.closed_by_label else ""
    parts = [f"{req.get_state_display().lower()}{by} {timezone.localtime(req.closed_at, tz).strftime('%H:%M')}"]
    if execution is not None:
        parts.append(f"executed {clock_time(execution.granted_at, tz)}")
        if execution.state == ExecutionState.GRANTED:
            parts.append("no outcome reported yet")
        else:
            parts.append(f"{execution.state}: {execution.detail}" if execution.detail else execution.state)
    elif req.claim_expired_at is not None:
        parts.append(f"expired unclaimed at {clock_time(req.claim_expired_at, tz)}")
    elif req.claim_by is not None and req.state in CLAIMABLE:
        parts.append(f"claim by {clock_time(req.claim_by, tz)}")
    return " · ".join(parts)
