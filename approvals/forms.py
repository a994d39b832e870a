"""Parsing what a person typed. The rules (who, when, what needs a justification) live in the
services; their refusals come back here as field errors."""

from __future__ import annotations

from django import forms

from approvals.models import MAX_JUSTIFICATION, ApprovalRequest, Decision
from approvals.selectors import QueueFilters


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
