"""Forms of the plan editor, the containment panel and the context tag form.

They parse and validate what a person typed; the services check the rules again and decide.
Durations are typed in minutes (or hours for tags), which is how people think of soaks and windows.
"""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal

from django import forms
from django.core.exceptions import ValidationError
from django.db.models import QuerySet

from governance.models import Workflow
from rollouts.models import ContextTag, FallbackMode, Metric, Operator, RolloutPlan, Severity, SegmentKind
from rollouts.services import PLAN_FIELDS

MINUTES = {"min_value": 0, "max_value": 60 * 24 * 30}
# Rows of the editor's tables start empty (no initial values, a blank first choice), so an
# untouched extra row is recognised as unchanged and skipped instead of refused.
BLANK = [("", "—")]
THRESHOLD = {"max_digits": 18, "decimal_places": 6}


class PlanForm(forms.ModelForm):
    workflow = forms.ModelChoiceField(queryset=Workflow.objects.none(), to_field_name="slug",
                                      help_text="Only workflows whose rollouts you manage.")

    class Meta:
        model = RolloutPlan
        fields = PLAN_FIELDS
        widgets = {"notes": forms.Textarea(attrs={"rows": 2})}
        help_texts = {
            "release_version": "What the route API serves to exposed segments.",
            "stable_version": "What every segment returns to on a rollback.",
            "fallback_mode": "What exposed users get when AI behaviour weakens.",
            "webhook_url": "For the signed webhook executor: where rollbacks and fallbacks are POSTed.",
        }

    def __init__(self, *args, workflows: QuerySet[Workflow] | None = None, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        if workflows is None:
            del self.fields["workflow"]
        else:
            self.fields["workflow"].queryset = workflows

    def clean(self) -> dict:
        data = super().clean()
        if data.get("executor") == RolloutPlan.Executor.WEBHOOK and not data.get("webhook_url"):
            self.add_error("webhook_url", "The webhook executor needs the URL to call.")
        return data

    def plan_fields(self) -> dict:
        return {name: self.cleaned_data[name] for name in PLAN_FIELDS}


class RingForm(forms.Form):
    segment_kind = forms.ChoiceField(choices=BLANK + SegmentKind.choices)
    segment_value = forms.CharField(max_length=100)
    exposure_percent = forms.IntegerField(label="Exposure (%)", min_value=1, max_value=100)
    min_soak_minutes = forms.IntegerField(label="Minimum soak (min)", **MINUTES)
    approval_point = forms.BooleanField(required=False, help_text="A person approves before this ring opens.")

    def row(self) -> dict:
        d = self.cleaned_data
        return {"segment_kind": d["segment_kind"], "segment_value": d["segment_value"],
                "exposure_percent": d["exposure_percent"], "min_soak": timedelta(minutes=d["min_soak_minutes"]),
                "approval_point": d["approval_point"]}

    @staticmethod
    def initial_of(plan: RolloutPlan) -> list[dict]:
        return [{"segment_kind": r.segment_kind, "segment_value": r.segment_value, "exposure_percent": r.exposure_percent,
                 "min_soak_minutes": int(r.min_soak.total_seconds() // 60), "approval_point": r.approval_point}
                for r in plan.rings.all()]


class RuleForm(forms.Form):
    metric = forms.ModelChoiceField(queryset=Metric.objects.all(), to_field_name="slug")
    operator = forms.ChoiceField(choices=BLANK + Operator.choices)
    threshold = forms.DecimalField(**THRESHOLD)
    min_samples = forms.IntegerField(min_value=1, max_value=1_000_000)

    def clean_threshold(self) -> Decimal:
        value = self.cleaned_data["threshold"]
        if not value.is_finite():
            raise ValidationError("Enter a finite number.")
        return value


class CriterionForm(RuleForm):
    window_minutes = forms.IntegerField(label="Window (min)", min_value=1, max_value=MINUTES["max_value"])
    field_order = ["metric", "operator", "threshold", "window_minutes", "min_samples"]

    def row(self) -> dict:
        d = self.cleaned_data
        return {"metric": d["metric"], "operator": d["operator"], "threshold": d["threshold"],
                "window": timedelta(minutes=d["window_minutes"]), "min_samples": d["min_samples"]}

    @staticmethod
    def initial_of(plan: RolloutPlan) -> list[dict]:
        return [{"metric": c.metric.slug, "operator": c.operator, "threshold": c.threshold,
                 "window_minutes": int(c.window.total_seconds() // 60), "min_samples": c.min_samples}
                for c in plan.criteria.select_related("metric")]


class TriggerForm(RuleForm):
    off_hours_threshold = forms.DecimalField(required=False, help_text="Outside business hours, if different.",
                                             **THRESHOLD)
    sustained_minutes = forms.IntegerField(label="Sustained for (min)", min_value=1, max_value=MINUTES["max_value"])
    severity = forms.ChoiceField(choices=BLANK + Severity.choices)
    field_order = ["metric", "operator", "threshold", "off_hours_threshold", "sustained_minutes", "min_samples", "severity"]

    def row(self) -> dict:
        d = self.cleaned_data
        return {"metric": d["metric"], "operator": d["operator"], "threshold": d["threshold"],
                "off_hours_threshold": d["off_hours_threshold"], "sustained_for": timedelta(minutes=d["sustained_minutes"]),
                "min_samples": d["min_samples"], "severity": d["severity"]}

    @staticmethod
    def initial_of(plan: RolloutPlan) -> list[dict]:
        return [{"metric": t.metric.slug, "operator": t.operator, "threshold": t.threshold,
                 "off_hours_threshold": t.off_hours_threshold, "sustained_minutes": int(t.sustained_for.total_seconds() // 60),
                 "min_samples": t.min_samples, "severity": t.severity}
                for t in plan.triggers.select_related("metric")]


class BaseRowFormSet(forms.BaseFormSet):
    def rows(self) -> list[dict]:
        return [f.row() for f in self.forms if f.cleaned_data and not self._should_delete_form(f)]


RingFormSet = forms.formset_factory(RingForm, formset=BaseRowFormSet, extra=1, can_delete=True, max_num=20,
                                    validate_max=True)
CriterionFormSet = forms.formset_factory(CriterionForm, formset=BaseRowFormSet, extra=1, can_delete=True,
                                         max_num=30, validate_max=True)
TriggerFormSet = forms.formset_factory(TriggerForm, formset=BaseRowFormSet, extra=1, can_delete=True, max_num=30,
                                       validate_max=True)


class ContainmentForm(forms.Form):
    reason = forms.CharField(max_length=2000, required=False, widget=forms.Textarea(attrs={"rows": 2}))
    mode = forms.ChoiceField(choices=[("", "the plan's fallback mode"), *FallbackMode.choices], required=False)
    to_ring = forms.IntegerField(min_value=0, max_value=100, required=False)
    exposure_percent = forms.IntegerField(min_value=0, max_value=100, required=False)


class ContextTagForm(forms.Form):
    kind = forms.ChoiceField(choices=ContextTag.Kind.choices, initial=ContextTag.Kind.EXPECTED_LATENCY_INCREASE)
    metric = forms.ModelChoiceField(queryset=Metric.objects.all(), to_field_name="slug", required=False,
                                    help_text="Defaults to latency_p95_ms / cost_per_task for those kinds; "
                                              "none for window tags.")
    expected_change_percent = forms.DecimalField(label="Expected change (%)", required=False, min_value=Decimal("0.01"),
                                                 max_value=Decimal("1000"), max_digits=7, decimal_places=2)
    hours = forms.DecimalField(label="In force for (hours)", min_value=Decimal("0.1"), max_value=Decimal("72"),
                               max_digits=5, decimal_places=1, initial=Decimal("4"))
    all_plans = forms.BooleanField(required=False, label="Every rollout of this workflow, not only this plan")
    reason = forms.CharField(max_length=2000, widget=forms.Textarea(attrs={"rows": 3}),
                             help_text="What is expected to change and why: it is quoted in the evidence.",
                             error_messages={"required": "Say what is expected to change and why."})

    def clean(self) -> dict:
        data = super().clean()
        if data.get("kind") in ContextTag.WINDOW_KINDS:
            data["metric"], data["expected_change_percent"] = None, None
        elif data.get("kind") and data.get("expected_change_percent") is None:
            self.add_error("expected_change_percent", "Give the expected change in percent, e.g. 15.")
        return data
