"""Dispatch: an agent asks "may I do this action now?" and gets allow, deny or pending.

The answer, checked in this order (README "Dispatch"):

1. The workflow is paused (kill switch) → deny `paused`.
2. The action is not declared for the workflow (GovernedAction) → deny `unknown_action`.
3. A live plan of the workflow is in `read_only` or `manual_path` fallback → deny
   `fallback_read_only` / `fallback_manual_path`.
4. The action's live rules, in order (approvals.rules): the first whose CEL condition holds
   decides: allow (`allowed_by_rule`), deny (`denied_by_rule`, with the rule's reason), approve
   (`approval_required`, with the rule's quorum, approver roles and policy) or "use the tier".
   A condition that fails on this call denies (`rule_error`, naming the rule): never allow.
5. No rule holds, or it says "use the tier": the tier/risk rule. The tier is the one in force now
   (off-hours tier outside business hours; a migration or maintenance window tag in force lowers
   it to 3, gated):

       tier 1 (autonomous)  low, medium run unattended (`within_autonomy`)
       tier 2 (supervised)  low
       tier 3 (gated)       nothing

   High and critical actions always need a person (`approval_required`, the action's quorum).
6. A `human_review` fallback in force turns an allow into `approval_required`.

An allow grants one execution of exactly that call (`approvals.executions`); pending opens an
approval request through `approvals.services.create_request`. Shadow rules are evaluated beside
the live ones and a different answer is kept as a `ShadowDifference`; they change nothing.

Every answer is audited: `dispatch.allowed` (with its execution), `dispatch.denied`, or the
request's `approval.requested`, each with the rule that decided and the values it read. The answer
is only returned once that is committed; a failure on the way is an error (503), never `allow`.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import datetime
from functools import lru_cache
from typing import Any

from django.db import connection, transaction

from approvals import executions, rules
from approvals import services as approval_services
from approvals.models import ActionRule, ApprovalRequest, EscalationPolicy, Execution, RuleOutcome, ShadowDifference
from audit import log as audit
from core import clock
from core.errors import TransitionRefused
from governance.models import GovernedAction, ServiceAccount, Workflow

RISKS = [r.value for r in GovernedAction.Risk]
# The riskiest action each autonomy tier runs without asking a person (None: nothing).
UNATTENDED_UP_TO: dict[int, str | None] = {1: "medium", 2: "low", 3: None}
DENYING_FALLBACKS = {
    "read_only": "is in read-only fallback",
    "manual_path": "is handled by its manual path",
}


def runs_unattended(tier: int, risk: str) -> bool:
    ceiling = UNATTENDED_UP_TO.get(tier)
    return ceiling is not None and RISKS.index(risk) <= RISKS.index(ceiling)


@dataclass(frozen=True)
class Situation:
    """What other apps know of a workflow at the time of a call (rollouts: tags and fallback)."""

    tags: dict[str, Any] = field(default_factory=dict)
    lowered_tier: int | None = None
    lowered_by: str = ""
    fallback_mode: str = ""
    fallback_of: str = ""


SituationProvider = Callable[[Workflow, datetime], Situation]
UnattendedListener = Callable[[Execution], None]
_situation_providers: list[SituationProvider] = []
_unattended_listeners: list[UnattendedListener] = []


def provide_situation(provider: SituationProvider) -> None:
    """Register what an app adds to every dispatch (called in its AppConfig.ready)."""
    if provider not in _situation_providers:
        _situation_providers.append(provider)


def on_unattended_allow(listener: UnattendedListener) -> None:
    """Register a call made, in the dispatch's transaction, for every allow at tier 1."""
    if listener not in _unattended_listeners:
        _unattended_listeners.append(listener)


def situation_of(workflow: Workflow, at: datetime) -> Situation:
    """What the registered apps know of the workflow at `at` (tags, lowered tier, fallback)."""
    situation = Situation()
    for provider in _situation_providers:
        found = provider(workflow, at)
        situation = replace(
            situation, tags={**situation.tags, **found.tags},
            lowered_tier=max(filter(None, (situation.lowered_tier, found.lowered_tier)), default=None),
            lowered_by=situation.lowered_by or found.lowered_by,
            fallback_mode=situation.fallback_mode or found.fallback_mode,
            fallback_of=situation.fallback_of or found.fallback_of)
    return situation


def tier_in_force(workflow: Workflow, situation: Situation, at: datetime) -> tuple[int, str]:
    """The tier dispatch uses at `at`, and what lowered it ("" when nothing did)."""
    tier = workflow.tier_at(at)
    if situation.lowered_tier is not None and situation.lowered_tier > tier:
        return situation.lowered_tier, situation.lowered_by
    return tier, ""


@dataclass(frozen=True)
class Verdict:
    """What the rules and the tier say of one call, before anything is written."""

    decision: str  # allow | deny | pending
    code: str
    reason: str
    rule: ActionRule | None = None
    values: dict = field(default_factory=dict)
    quorum: int | None = None
    approver_roles: tuple[str, ...] = ()
    policy_id: int | None = None

    def rule_data(self) -> dict | None:
        return {**self.rule.as_data(), "values": self.values} if self.rule is not None else None

    def comparable(self) -> dict:
        """The answer the agent would get (which rule gave it is kept beside, not compared)."""
        return {"decision": self.decision, "quorum": self.quorum, "approver_roles": list(self.approver_roles),
                "policy": self.policy_id}


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
    execution: Execution | None = None
    rule: dict | None = None


@dataclass(frozen=True)
class Declared:
    """What the workflow's GovernedAction of that name says (read with the workflow)."""

    id: int
    risk: str
    quorum: int
    rules: tuple[ActionRule, ...] = ()


RULE_COLUMNS = ("id", "position", "shadow", "condition", "outcome", "reason", "quorum", "approver_roles",
                "policy_id")
# On PostgreSQL the action's rules come with the workflow, as one JSON column of the same statement.
_RULES_JSON = ("(SELECT json_agg(json_build_object(" + ", ".join(f"'{c}', r.{c}" for c in RULE_COLUMNS)
               + ") ORDER BY r.shadow, r.position) FROM approvals_actionrule r WHERE r.action_id = a.id)::text")


@lru_cache(maxsize=1024)
def _parsed_rules(action_id: int, text: str | None) -> tuple[ActionRule, ...]:
    """An action's rules from their JSON text, kept per text: a list that has not changed is not
    parsed again (the rules are only read, never changed, on the way)."""
    return tuple(ActionRule(action_id=action_id, **row) for row in json.loads(text or "[]"))


def _lock_shared(account: ServiceAccount, slug: str, action: str) -> tuple[Workflow, Declared | None]:
    """The account's workflow, read under a share lock, the action declared for it and the action's
    rules, in one statement: a pause (FOR UPDATE) waits for dispatches in flight and every dispatch
    after a committed pause sees it; dispatches do not block each other. Outside the account's scope
    the workflow does not exist."""
    workflow = None
    postgresql = connection.vendor == "postgresql"
    if account.active:
        scope = ServiceAccount.workflows.through._meta.db_table
        lock = " FOR SHARE OF w" if postgresql else ""
        rules_column = _RULES_JSON if postgresql else "NULL"
        workflow = next(iter(Workflow.objects.raw(
            f"SELECT w.*, a.id AS action_id, a.risk AS action_risk, a.quorum AS action_quorum, "
            f"{rules_column} AS action_rules "
            f"FROM governance_workflow w JOIN {scope} s ON s.workflow_id = w.id "
            f"LEFT JOIN governance_governedaction a ON a.workflow_id = w.id AND a.name = %s "
            f"WHERE w.slug = %s AND s.serviceaccount_id = %s{lock}", [action, slug, account.pk])), None)
    if workflow is None:
        raise TransitionRefused("not_found", f"No workflow {slug!r} in this token's scope.")
    if not workflow.action_risk:
        return workflow, None
    if postgresql:
        rule_list = _parsed_rules(workflow.action_id, workflow.action_rules)
    else:
        rule_list = tuple(ActionRule.objects.filter(action_id=workflow.action_id).order_by("shadow", "position"))
    return workflow, Declared(workflow.action_id, workflow.action_risk, workflow.action_quorum, rule_list)


def _by_tier(governed: Declared, tier: int, hours: str, lowered_by: str) -> Verdict:
    lowered = f"; {lowered_by}" if lowered_by else ""
    if runs_unattended(tier, governed.risk):
        return Verdict("allow", "within_autonomy",
                       f"{governed.risk} risk runs without approval at tier {tier} ({hours}{lowered}).")
    return Verdict("pending", "approval_required",
                   f"{governed.risk} risk needs {governed.quorum} approval(s) at tier {tier} ({hours}{lowered}).",
                   quorum=governed.quorum)


def decide(rule_list: list[ActionRule], evaluator: rules.Evaluator, governed: Declared, tier: int, hours: str,
           lowered_by: str = "") -> Verdict:
    """The first rule that holds decides; none, or "use the tier", leaves it to the tier. Pure."""
    for rule in rule_list:
        try:
            holds = evaluator.holds(rule.condition)
        except rules.RuleRuntimeError as exc:
            return Verdict("deny", "rule_error", f"Rule {rule.number} ({rule.condition}) could not be decided for "
                           f"this call: {exc}. Nothing was allowed; fix the call or the rule.", rule=rule,
                           values=evaluator.values_read(rule.condition))
        if not holds:
            continue
        values = evaluator.values_read(rule.condition)
        if rule.outcome == RuleOutcome.ALLOW:
            return Verdict("allow", "allowed_by_rule", f"Rule {rule.number} allows it: {rule.condition}.",
                           rule=rule, values=values)
        if rule.outcome == RuleOutcome.DENY:
            return Verdict("deny", "denied_by_rule", f"Rule {rule.number}: {rule.reason}", rule=rule, values=values)
        if rule.outcome == RuleOutcome.APPROVE:
            roles = tuple(rule.approver_roles)
            needs = f"{rule.quorum} approval(s)" + (f" incl. {' and '.join(roles)}" if roles else "")
            return Verdict("pending", "approval_required", f"Rule {rule.number} ({rule.condition}) needs {needs}.",
                           rule=rule, values=values, quorum=rule.quorum, approver_roles=roles,
                           policy_id=rule.policy_id)
        return replace(_by_tier(governed, tier, hours, lowered_by), rule=rule, values=values)
    return _by_tier(governed, tier, hours, lowered_by)


def under_fallback(verdict: Verdict, workflow: Workflow, situation: Situation, quorum: int) -> Verdict:
    """A `human_review` fallback in force sends what would be allowed to a person instead."""
    if verdict.decision != "allow" or situation.fallback_mode != "human_review":
        return verdict
    return replace(verdict, decision="pending", code="approval_required", quorum=quorum,
                   reason=f"{workflow.slug} is in human-review fallback ({situation.fallback_of}): "
                          f"every action waits for a person. {verdict.reason}")


def _split(rule_list: tuple[ActionRule, ...]) -> tuple[list[ActionRule], list[ActionRule]]:
    live, shadow = [], []
    for rule in rule_list:
        (shadow if rule.shadow else live).append(rule)
    return live, shadow


def _call(account: ServiceAccount, workflow: Workflow, parameters: dict, evidence: dict, confidence: float | None,
          tier: int, now: datetime, business: bool, tags: dict) -> rules.Call:
    seen = dict(evidence)
    if confidence is not None:
        seen["confidence"] = float(confidence)
    owner = account.owner.get_username() if account.owner_id else ""
    return rules.Call(params=parameters, evidence=seen, agent={"name": account.name, "owner": owner},
                      workflow={"slug": workflow.slug, "environment": workflow.environment, "tier": tier},
                      now=now, business_hours=business, tags=tags)


@transaction.atomic(savepoint=False)  # a refusal rolls back the caller's transaction (or savepoint) whole
def dispatch(*, account: ServiceAccount, workflow: str, action: str, parameters: dict[str, Any],
             evidence: dict[str, Any], confidence: float | None = None, idempotency_key: str = "") -> Answer:
    """Decide whether `account` may run `action` on the workflow (slug) now; the order is in the
    module docstring.

    Audit: `dispatch.allowed` / `dispatch.denied`, or `approval.requested` via create_request.
    """
    workflow, governed = _lock_shared(account, workflow, action)
    now = clock.now()
    business = workflow.in_business_hours(now)
    situation = situation_of(workflow, now)
    tier, lowered_by = tier_in_force(workflow, situation, now)
    hours = "business hours" if business else "off hours"
    denying = DENYING_FALLBACKS.get(situation.fallback_mode)

    if workflow.paused:
        verdict = Verdict("deny", "paused", f"{workflow.slug} is paused: {workflow.paused_reason}")
    elif governed is None:
        verdict = Verdict("deny", "unknown_action", f"{action!r} is not an action declared for {workflow.slug}; "
                          "ask its release manager to declare it.")
    elif denying is not None:
        verdict = Verdict("deny", f"fallback_{situation.fallback_mode}",
                          f"{workflow.slug} {denying} ({situation.fallback_of}); no agent action runs until it "
                          "returns to normal.")
    else:
        evaluator = rules.Evaluator(_call(account, workflow, parameters, evidence, confidence, tier, now, business,
                                          situation.tags))
        live, shadow = _split(governed.rules)
        verdict = decide(live, evaluator, governed, tier, hours, lowered_by)
        if shadow:
            _compare_shadow(governed, verdict, decide(shadow, evaluator, governed, tier, hours, lowered_by),
                            account, parameters, now)
        verdict = under_fallback(verdict, workflow, situation, governed.quorum)

    risk = governed.risk if governed is not None else None
    base = {"workflow": workflow, "action": action, "tier": tier, "business_hours": business, "risk": risk,
            "rule": verdict.rule_data()}
    if verdict.decision == "pending":
        policy = EscalationPolicy.objects.get(pk=verdict.policy_id) if verdict.policy_id else None
        request = approval_services.create_request(
            workflow=workflow, kind=ApprovalRequest.Kind.AGENT_ACTION, action=action, parameters=parameters,
            evidence=evidence, requester=account, mode=ApprovalRequest.Mode.GATE, quorum=verdict.quorum,
            idempotency_key=idempotency_key, confidence=confidence, approver_roles=list(verdict.approver_roles),
            policy=policy, rule=verdict.rule_data() or {}, workflow_locked=True,
        )
        return Answer("pending", verdict.code, verdict.reason, approval=request, **base)

    execution = None
    if verdict.decision == "allow":
        execution = executions.grant(workflow=workflow, action=action, digest=executions.parameters_digest(parameters),
                                     account=account, now=now)
    audit.record(account, f"dispatch.{'allowed' if execution else 'denied'}", workflow, data={
        "action": action, "parameters": parameters, "evidence": evidence, "confidence": confidence,
        "tier": tier, "business_hours": business, "risk": risk, "code": verdict.code,
        "idempotency_key": idempotency_key, "rule": verdict.rule_data(),
        "execution": execution.pk if execution else None,
        **({"tier_lowered_by": lowered_by} if lowered_by else {}),
        **({"fallback": situation.fallback_mode} if situation.fallback_mode else {}),
    }, reason=verdict.reason)
    if execution is not None and tier == 1:
        for listener in _unattended_listeners:
            listener(execution)
    return Answer(verdict.decision, verdict.code, verdict.reason, execution=execution, **base)


def _compare_shadow(governed: Declared, live: Verdict, shadow: Verdict, account: ServiceAccount,
                    parameters: dict, now: datetime) -> None:
    if live.comparable() == shadow.comparable():
        return
    ShadowDifference.objects.create(action_id=governed.id, created_at=now, agent=account.name,
                                    parameters=parameters, live=_described(live), shadow=_described(shadow))


def _described(verdict: Verdict) -> dict:
    return {**verdict.comparable(), "code": verdict.code, "rule": verdict.rule.number if verdict.rule else None,
            "reason": verdict.reason}
