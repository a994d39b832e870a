"""Parsing what a person typed. The rules (who, when, what needs a justification) live in the
services; their refusals come back here as field errors."""

from __future__ import annotations

import json

from django import forms
from django.contrib.auth import get_user_model

from approvals import rules
from approvals.models import (
    MAX_JUSTIFICATION,
    ActionRule,
    ApprovalRequest,
    Decision,
    EscalationLevel,
    EscalationPolicy,
    Mode,
    RuleOutcome,
)
from approvals.selectors import QueueFilters
from approvals.services import MAX_RULES
from governance.permissions import Role


class DecisionForm(forms.Form):
    verdict = forms.ChoiceField(choices=Decision.Verdict.choices,
                                error_messages={"required": "Choose Approve, Reject or Override."})
    justification = forms.CharField(
        required=False, max_length=MAX_JUSTIFICATION,
        widget=forms.Textarea(attrs={"rows": 3, "placeholder": "Why? Required to reject or override."}),
    )
    reason = forms.ChoiceField(choices=[("", "— choose for an override —"), *Decision.Reason.choices], required=False,
                               label="Reason (override)")

    def __init__(self, *args, approval: ApprovalRequest, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.fields["verdict"].choices = [(v, v) for v in approval.allowed_verdicts()]
        self.fields["verdict"].error_messages["invalid_choice"] = (
            f"This {approval.get_mode_display()} can be answered with {' or '.join(approval.allowed_verdicts())}.")


class QueueFilterForm(forms.Form):
    workflow = forms.ChoiceField(required=False)
    kind = forms.ChoiceField(required=False, choices=[("", "all kinds"), *ApprovalRequest.Kind.choices])
    escalated = forms.BooleanField(required=False, label="escalated only")
    mine = forms.BooleanField(required=False, label="assigned to me")

    def __init__(self, *args, workflows: list[str], **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.fields["workflow"].choices = [("", "all workflows"), *((slug, slug) for slug in workflows)]

    def filters(self) -> QueueFilters:
        if not self.is_valid():
            return QueueFilters()
        return QueueFilters(**self.cleaned_data)


# -- a governed action's rules, the "try it" box, escalation policies ------------------------------

BLANK = [("", "—")]
ROLE_CHOICES = [(str(role), str(role).replace("_", " ")) for role in Role if role != Role.AGENT]
CODE = {"rows": 2, "spellcheck": "false", "autocapitalize": "off", "class": "code"}


class RuleForm(forms.Form):
    """One rule of a list. The condition is compiled here (the same check the service makes), so
    every rule's error is shown at once; the rest is the service's to refuse."""

    condition = forms.CharField(max_length=rules.MAX_CONDITION, widget=forms.Textarea(attrs=CODE),
                                help_text="CEL over params, evidence, agent, workflow, now, business_hours, tags.")
    outcome = forms.ChoiceField(choices=BLANK + RuleOutcome.choices)
    reason = forms.CharField(max_length=500, required=False, help_text="Shown to the agent when the rule denies.")
    quorum = forms.IntegerField(required=False, min_value=1, max_value=9, help_text="approve: how many people.")
    approver_roles = forms.MultipleChoiceField(required=False, choices=ROLE_CHOICES, label="Roles among the approvers",
                                               widget=forms.CheckboxSelectMultiple)
    policy = forms.TypedChoiceField(required=False, coerce=int, empty_value=None, label="Escalation policy")

    def __init__(self, *args, policies: list[tuple[object, str]] = (), **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.fields["policy"].choices = [("", "the gate policy in force"), *policies]

    def clean_condition(self) -> str:
        condition = self.cleaned_data["condition"]
        if (error := rules.check(condition)) is not None:
            raise forms.ValidationError(error)
        return condition

    def spec(self) -> dict:
        data = self.cleaned_data
        spec = {"condition": data["condition"], "outcome": data["outcome"], "reason": data["reason"]}
        if data["outcome"] == RuleOutcome.APPROVE:
            spec.update(quorum=data["quorum"] or 1, approver_roles=data["approver_roles"], policy=data["policy"])
        else:  # what an approve rule would need is refused on another outcome: pass it for the service to say so
            spec.update({name: data[name] for name in ("quorum", "approver_roles", "policy") if data[name]})
        return spec

    @staticmethod
    def initial_of(rule: ActionRule) -> dict:
        return {"condition": rule.condition, "outcome": rule.outcome, "reason": rule.reason, "quorum": rule.quorum,
                "approver_roles": list(rule.approver_roles), "policy": rule.policy_id}


RuleFormSet = forms.formset_factory(RuleForm, extra=1, can_delete=True, can_order=True, max_num=MAX_RULES,
                                    absolute_max=MAX_RULES + 10)


def parsed_json(text: str, field: str) -> dict:
    text = (text or "").strip()
    if not text:
        return {}
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise forms.ValidationError(f"Not JSON: {exc.msg} at line {exc.lineno}, column {exc.colno}.") from None
    if not isinstance(value, dict):
        raise forms.ValidationError(f"Write the {field} as a JSON object, e.g. {{\"amount\": 20}}.")
    return value


class TryForm(forms.Form):
    """A call to try the rules on: nothing is written."""

    parameters = forms.CharField(widget=forms.Textarea(attrs=CODE), max_length=20_000, initial="{}",
                                 help_text='The dispatch parameters as JSON, e.g. {"amount": 20}.')
    evidence = forms.CharField(widget=forms.Textarea(attrs=CODE), max_length=20_000, required=False,
                               help_text="Optional, as JSON.")
    confidence = forms.DecimalField(required=False, min_value=0, max_value=1, decimal_places=4,
                                    help_text="Optional, between 0 and 1.")
    agent = forms.ChoiceField(required=False, help_text="Whose call it is (agent.name, agent.owner).")

    def __init__(self, *args, agents: list[str] = (), **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.fields["agent"].choices = [(name, name) for name in agents] or [("", "— no service account yet —")]

    def clean_parameters(self) -> dict:
        return parsed_json(self.cleaned_data["parameters"], "parameters")

    def clean_evidence(self) -> dict:
        return parsed_json(self.cleaned_data["evidence"], "evidence")


class RemoveActionForm(forms.Form):
    confirm = forms.BooleanField(label="Its rules go with it, and agents asking for it are then denied as an "
                                       "unknown action.",
                                 error_messages={"required": "Tick the box to confirm."})


UNITS = [(60, "minutes"), (3600, "hours"), (86400, "days"), (1, "seconds")]


class PolicyForm(forms.Form):
    mode = forms.ChoiceField(choices=Mode.choices, help_text="A gate waits for a person; an override window "
                                                             "proceeds at its deadline unless someone stops it.")
    hours = forms.ChoiceField(choices=EscalationPolicy.Hours.choices, label="When",
                              help_text="A policy for business or off hours wins over one for any time.")
    terminal_action = forms.ChoiceField(choices=EscalationPolicy.TerminalAction.choices,
                                        label="When the last level runs out",
                                        help_text="A gate always ends in rejection.")


class LevelForm(forms.Form):
    groups = forms.MultipleChoiceField(required=False, choices=ROLE_CHOICES, widget=forms.CheckboxSelectMultiple,
                                       label="Roles asked")
    people = forms.CharField(required=False, max_length=1000, label="People asked",
                             help_text="Usernames, separated by commas.")
    timeout = forms.IntegerField(min_value=1, label="For")
    unit = forms.TypedChoiceField(choices=UNITS, coerce=int, initial=60, label="Unit")
    replaces = forms.BooleanField(required=False, label="Replaces the earlier levels",
                                  help_text="From this level on, only its people decide.")

    def clean_people(self) -> list:
        names = [n.strip() for n in self.cleaned_data["people"].split(",") if n.strip()]
        found = {u.get_username(): u for u in get_user_model().objects.filter(username__in=names, is_active=True)}
        unknown = [n for n in names if n not in found]
        if unknown:
            raise forms.ValidationError(f"No active person named {', '.join(unknown)}.")
        return [found[n] for n in dict.fromkeys(names)]

    def level(self) -> dict:
        data = self.cleaned_data
        return {"groups": data["groups"], "people": data["people"], "timeout_seconds": data["timeout"] * data["unit"],
                "replaces": data["replaces"]}

    @staticmethod
    def initial_of(level: EscalationLevel) -> dict:
        unit = next(u for u, _ in sorted(UNITS, reverse=True) if level.timeout_seconds % u == 0)
        return {"groups": [g.name for g in level.groups.all()], "timeout": level.timeout_seconds // unit, "unit": unit,
                "people": ", ".join(sorted(p.get_username() for p in level.people.all())),
                "replaces": level.replaces_previous}


LevelFormSet = forms.formset_factory(LevelForm, extra=0, can_delete=True, max_num=10, absolute_max=20)
