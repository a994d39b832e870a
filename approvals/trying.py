"""The action page's "try it" box: what a dispatch of a governed action would be answered now,
for parameters, evidence and a confidence a person types in. Nothing is written: no execution,
no approval request, no shadow difference, no audit event.

The answer is the one `approvals.dispatch` would give: the same situation (context tags, a
lowered tier, a fallback in force), the same `decide` over the live rules and then the tier.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal

from approvals import dispatch, explain, rules
from approvals.selectors import rules_of
from governance.models import GovernedAction, ServiceAccount


@dataclass(frozen=True)
class Trial:
    verdict: dispatch.Verdict
    shadow: dispatch.Verdict | None  # None: the action has no shadow rules
    tier: int
    business_hours: bool
    at: datetime
    before_rules: str  # why a real dispatch now would be answered before any rule (paused, fallback)

    @property
    def rule_line(self) -> str:
        return explain.rule_line(self.verdict.rule) if self.verdict.rule is not None else ""

    @property
    def values(self) -> list[str]:
        return explain.values_read(self.verdict.rule_data() or {})

    @property
    def shadow_differs(self) -> bool:
        return self.shadow is not None and self.shadow.comparable() != self.verdict.comparable()

    @property
    def shadow_rule_line(self) -> str:
        return explain.rule_line(self.shadow.rule) if self.shadow is not None and self.shadow.rule else ""


def try_call(action: GovernedAction, *, parameters: dict, evidence: dict, confidence: Decimal | None,
             account: ServiceAccount | None, at: datetime) -> Trial:
    workflow = action.workflow
    business = workflow.in_business_hours(at)
    # The situation the real dispatch reads (a read: the providers only query).
    situation = dispatch.situation_of(workflow, at)
    tier, lowered_by = dispatch.tier_in_force(workflow, situation, at)
    hours = "business hours" if business else "off hours"
    seen = dict(evidence)
    if confidence is not None:
        seen["confidence"] = float(confidence)
    owner = account.owner.get_username() if account is not None else ""
    call = rules.Call(params=parameters, evidence=seen, agent={"name": account.name if account else "", "owner": owner},
                      workflow={"slug": workflow.slug, "environment": workflow.environment, "tier": tier},
                      now=at, business_hours=business, tags=situation.tags)
    evaluator = rules.Evaluator(call)
    declared = dispatch.Declared(action.pk, action.risk, action.quorum)
    live, shadow = rules_of(action)
    verdict = dispatch.decide(live, evaluator, declared, tier, hours, lowered_by)
    verdict = dispatch.under_fallback(verdict, workflow, situation, action.quorum)
    before = ""
    if workflow.paused:
        before = f"{workflow.slug} is paused ({workflow.paused_reason}): every dispatch is denied until it is resumed."
    elif situation.fallback_mode in dispatch.DENYING_FALLBACKS:
        before = (f"{workflow.slug} {dispatch.DENYING_FALLBACKS[situation.fallback_mode]} ({situation.fallback_of}): "
                  "every dispatch is denied until it returns to normal.")
    return Trial(verdict=verdict, shadow=dispatch.decide(shadow, evaluator, declared, tier, hours, lowered_by)
                 if shadow else None, tier=tier, business_hours=business, at=at, before_rules=before)
