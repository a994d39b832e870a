from __future__ import annotations

import re

from django import forms
from django.contrib.auth import get_user_model
from django.db.models import QuerySet

from governance.models import ContainmentAssignment, GovernedAction, Workflow, validate_holidays
from governance.permissions import APPROVE, CONTAIN, MANAGE_ROLLOUTS, SCOPED_PERMISSIONS, VIEW, Role
from governance.services import WORKFLOW_FIELDS


class PauseForm(forms.Form):
    reason = forms.CharField(
        max_length=2000,
        widget=forms.Textarea(attrs={"rows": 2, "placeholder": "Why is this workflow being stopped?"}),
        error_messages={"required": "Say why the workflow is paused; the reason goes into the audit trail."},
    )


class ResumeForm(forms.Form):
    reason = forms.CharField(max_length=2000, required=False, widget=forms.Textarea(attrs={"rows": 2}))


WEEKDAYS = [(0, "Mon"), (1, "Tue"), (2, "Wed"), (3, "Thu"), (4, "Fri"), (5, "Sat"), (6, "Sun")]
PERMISSION_LABELS = {VIEW: "view", APPROVE: "approve requests", CONTAIN: "take containment actions",
                     MANAGE_ROLLOUTS: "manage rollouts and rules"}


def people(*, active_only: bool = True) -> QuerySet:
    users = get_user_model().objects.order_by("-is_active", "username")
    return users.filter(is_active=True) if active_only else users


class PersonChoiceField(forms.ModelChoiceField):
    """A person chosen by username; shown with their name when they have one."""

    def __init__(self, *, active_only: bool = True, **kwargs) -> None:
        super().__init__(queryset=people(active_only=active_only), to_field_name="username", **kwargs)

    def label_from_instance(self, obj) -> str:
        full = obj.get_full_name()
        label = f"{obj.get_username()} ({full})" if full else obj.get_username()
        return label if obj.is_active else f"{label}, inactive"


class WorkflowForm(forms.ModelForm):
    """A new workflow. The model's validators are the service's (it runs full_clean too)."""

    business_days = forms.TypedMultipleChoiceField(choices=WEEKDAYS, coerce=int, initial=[0, 1, 2, 3, 4],
                                                   widget=forms.CheckboxSelectMultiple)
    holidays = forms.CharField(required=False, help_text="Whole days off hours, e.g. 2026-12-25, 2026-12-26.",
                               widget=forms.TextInput(attrs={"placeholder": "2026-12-25, 2026-12-26"}))

    class Meta:
        model = Workflow
        fields = ("slug", *WORKFLOW_FIELDS)
        widgets = {
            "description": forms.Textarea(attrs={"rows": 2}),
            "business_start": forms.TimeInput(attrs={"type": "time"}, format="%H:%M"),
            "business_end": forms.TimeInput(attrs={"type": "time"}, format="%H:%M"),
        }
        help_texts = {
            "slug": "How agents, URLs and the audit trail name it; fixed once created.",
            "autonomy_tier": "What may run without a person: 1 low and medium risk, 2 low risk, 3 nothing.",
            "off_hours_tier": "Outside business hours, if different.",
            "timezone": "Business hours are read in this time zone, e.g. Europe/Berlin.",
        }

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.fields["off_hours_tier"].choices = [("", "the same as in business hours"), *Workflow.Tier.choices]
        if self.instance.pk and self.instance.holidays:
            self.initial["holidays"] = ", ".join(self.instance.holidays)

    def clean_holidays(self) -> list[str]:
        days = [d for d in re.split(r"[\s,]+", self.cleaned_data.get("holidays") or "") if d]
        validate_holidays(days)  # a ValidationError names the date a person must fix
        return sorted(days)


class WorkflowAdminForm(forms.ModelForm):
    """The Django admin's workflow form (WorkflowAdmin.form): business days as weekday checkboxes,
    not a raw JSON list such as [0, 1, 2, 3, 4]."""

    business_days = forms.TypedMultipleChoiceField(choices=WEEKDAYS, coerce=int, widget=forms.CheckboxSelectMultiple,
                                                   help_text="The days business hours apply.")

    class Meta:
        model = Workflow
        fields = "__all__"


class ActionForm(forms.ModelForm):
    """Declare a governed action (`declaring`) or change its risk, quorum and description."""

    class Meta:
        model = GovernedAction
        fields = ("name", "risk", "quorum", "description")
        help_texts = {
            "name": "As the agent names it in its dispatch, e.g. pay_invoice.",
            "quorum": "How many distinct people approve it when the tier asks for a person.",
        }

    def __init__(self, *args, workflow: Workflow, declaring: bool = True, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.workflow, self.declaring = workflow, declaring
        if not declaring:
            del self.fields["name"]

    def clean_name(self) -> str:
        name = self.cleaned_data["name"]
        if self.declaring and self.workflow.actions.filter(name=name).exists():
            raise forms.ValidationError(f"{name} is already declared for {self.workflow.slug}; change it on its page.")
        return name


class ContainmentOwnerForm(forms.Form):
    user = PersonChoiceField(label="Person")
    duty = forms.ChoiceField(choices=ContainmentAssignment.Duty.choices)
    position = forms.ChoiceField(choices=ContainmentAssignment.Position.choices,
                                 initial=ContainmentAssignment.Position.PRIMARY,
                                 help_text="One primary per duty; backups may act as well.")


class ScopeForm(forms.Form):
    """Which object permissions a person holds on one workflow: exactly the ticked ones."""

    user = PersonChoiceField(label="Person", active_only=False)  # an inactive person's scope can be taken away
    permissions = forms.MultipleChoiceField(
        required=False, widget=forms.CheckboxSelectMultiple,
        choices=[(codename, PERMISSION_LABELS[codename]) for codename in SCOPED_PERMISSIONS],
        help_text="Untick every box to take the person's scope away.")


class RolesForm(forms.Form):
    roles = forms.MultipleChoiceField(required=False, widget=forms.CheckboxSelectMultiple,
                                      choices=[(str(role), str(role).replace("_", " ")) for role in Role])


class ServiceAccountForm(forms.Form):
    name = forms.CharField(max_length=63, help_text="Lowercase letters, digits, '-' and '_'; fixed once created.")
    owner = PersonChoiceField(help_text="The person the agent acts for: they can never approve its requests.")
    description = forms.CharField(max_length=300, required=False)


class TokenForm(forms.Form):
    label = forms.CharField(max_length=100, required=False, help_text="Where the token is used, e.g. production.")
