"""Rules over the call: the CEL conditions, their compile errors, and the first-match decision."""

from __future__ import annotations

import datetime as dt

import pytest

from approvals import rules
from approvals.dispatch import Declared, decide
from approvals.models import ActionRule

NOW = dt.datetime(2030, 1, 8, 10, 0, tzinfo=dt.UTC)


def call(**overrides) -> rules.Call:
    fields = {
        "params": {"order": "A-1", "amount": 400, "currency": "EUR", "items": [1, 2, 3]},
        "evidence": {"confidence": 0.82, "summary": "refund above the limit"},
        "agent": {"name": "refund-bot", "owner": "owen"},
        "workflow": {"slug": "refund-agent", "environment": "production", "tier": 2},
        "now": NOW, "business_hours": True,
        "tags": {"migration_window": True, "expected_latency_increase": 15.0},
    }
    return rules.Call(**{**fields, **overrides})


@pytest.mark.parametrize(("condition", "expected"), [
    ("params.amount <= 500", True),
    ("params.amount < 400", False),
    ("params.amount >= 400 && params.amount != 401", True),
    ("params.amount > 399.5", True),            # int against double compares as numbers
    ("params.amount == 400.0", True),
    ("params.currency in ['EUR', 'USD']", True),
    ("params.currency.startsWith('E') || false", True),
    ("size(params.items) == 3", True),
    ("!has(params.missing)", True),
    ("evidence.confidence < 0.6", False),
    ("agent.name == 'refund-bot' && agent.owner == 'owen'", True),
    ("workflow.environment == 'production' && workflow.tier == 2 && workflow.slug == 'refund-agent'", True),
    ("now > timestamp('2030-01-01T00:00:00Z') && now.getHours() == 10", True),
    ("business_hours", True),
    ("'migration_window' in tags && tags.expected_latency_increase >= 10.0", True),
    ("tags.exists(t, t.startsWith('expected_'))", True),
    ("params.amount > 100 ? true : false", True),
])
def test_each_operator_and_variable(condition, expected):
    assert rules.Evaluator(call()).holds(condition) is expected


@pytest.mark.parametrize(("condition", "line", "column", "words"), [
    ("params.amount <=", 1, 17, "mismatched input"),
    ("params.amount <= 50 &&& true", 1, 23, "token recognition error"),
    ("params.amount <= 50 &&\n  parms.x == 1", 2, 3, "Unknown variable 'parms'"),
])
def test_compile_errors_name_the_line_column_and_message(condition, line, column, words):
    with pytest.raises(rules.RuleSyntaxError) as raised:
        rules.compile_condition(condition)
    assert (raised.value.line, raised.value.column) == (line, column)
    assert words in raised.value.message
    assert str(raised.value).startswith(f"line {line}, column {column}: ")


def test_an_empty_condition_is_refused_and_macro_variables_are_not_unknown():
    assert "Write a condition" in rules.check("  ")
    assert rules.check("params.items.all(i, i > 0) && tags.exists(t, t == 'x')") is None


@pytest.mark.parametrize(("condition", "words"), [
    ("params.missing > 1", "no such field: missing"),
    ("params.currency > 1", "No such overload"),
    ("params.amount / 0 > 1", "division by zero"),
    ("params.amount", "gave 400, not true or false"),
])
def test_runtime_errors_are_raised_never_false(condition, words):
    with pytest.raises(rules.RuleRuntimeError, match=words):
        rules.Evaluator(call()).holds(condition)


def test_values_read_are_the_paths_the_condition_picks_out():
    evaluator = rules.Evaluator(call())
    read = evaluator.values_read("params.amount <= 50 && params['currency'].startsWith('E') && has(params.nope) "
                                 "&& business_hours && now > timestamp('2030-01-01T00:00:00Z') && tags.x")
    assert read == {"params.amount": 400, "params.currency": "EUR", "params.nope": "<absent>",
                    "business_hours": True, "now": NOW.isoformat(), "tags.x": "<absent>"}


def rule(position: int, condition: str, outcome: str, **fields) -> ActionRule:
    return ActionRule(pk=position + 100, position=position, condition=condition, outcome=outcome, **fields)


HIGH = Declared(id=1, risk="high", quorum=1)
LOW = Declared(id=1, risk="low", quorum=1)


def test_the_first_rule_that_holds_decides():
    rule_list = [rule(0, "params.amount <= 50", "allow"),
                 rule(1, "params.amount <= 5000", "approve", quorum=1),
                 rule(2, "true", "approve", quorum=2, approver_roles=["senior_approver"]),
                 rule(3, "true", "deny", reason="never reached")]
    for amount, decision, number, quorum in ((4, "allow", 1, None), (400, "pending", 2, 1),
                                             (40_000, "pending", 3, 2)):
        verdict = decide(rule_list, rules.Evaluator(call(params={"amount": amount})), HIGH, 2, "business hours")
        assert (verdict.decision, verdict.rule.number, verdict.quorum) == (decision, number, quorum)
        assert verdict.values == {"params.amount": amount} or number == 3
    assert decide(rule_list, rules.Evaluator(call(params={"amount": 40_000})), HIGH, 2, "").approver_roles == (
        "senior_approver",)


def test_a_rule_that_fails_on_the_call_denies_naming_it_and_later_rules_are_not_tried():
    rule_list = [rule(0, "params.amount <= 50", "deny", reason="small"),
                 rule(1, "true", "allow")]
    verdict = decide(rule_list, rules.Evaluator(call(params={"order": "A-1"})), LOW, 1, "business hours")
    assert (verdict.decision, verdict.code, verdict.rule.number) == ("deny", "rule_error", 1)
    assert "Rule 1 (params.amount <= 50)" in verdict.reason and "no such field: amount" in verdict.reason


def test_no_rule_or_use_the_tier_falls_back_to_the_tier_and_risk_rule():
    evaluator = rules.Evaluator(call())
    assert decide([], evaluator, LOW, 2, "business hours").code == "within_autonomy"
    assert decide([], evaluator, HIGH, 1, "business hours").code == "approval_required"
    use_tier = decide([rule(0, "true", "tier")], evaluator, LOW, 3, "off hours")
    assert (use_tier.decision, use_tier.rule.number) == ("pending", 1)
    assert decide([rule(0, "false", "allow")], evaluator, HIGH, 2, "").decision == "pending"
