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
from django.utils.text import capfirst

from core import outbound
from governance.models import Workflow
from rollouts.models import (
    MAX_FLAP_WINDOWS,
    BreachStatistic,
    ContextTag,
    FallbackMode,
    Metric,
    NoDataAction,
    Operator,
    RolloutPlan,
    SegmentKind,
    Severity,
    SilenceAction,
)
from rollouts.plans import PLAN_FIELDS

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
        elif data.get("webhook_url") and (problem := outbound.target_problem(data["webhook_url"])):
            self.add_error("webhook_url", f"{capfirst(problem)}.")
        return data

    def plan_fields(self) -> dict:
        return {name: self.cleaned_data[name] for name in PLAN_FIELDS}


class RingForm(forms.Form):
    segment_kind = forms.ChoiceField(label="Segment kind", choices=BLANK + SegmentKind.choices)
    segment_value = forms.CharField(max_length=100)
    exposure_percent = forms.IntegerField(label="Exposure (%)", min_value=1, max_value=100)
    min_soak_minutes = forms.IntegerField(label="Minimum soak (min)", **MINUTES)
    approval_point = forms.BooleanField(label="Approval point", required=False,
                                        help_text="A person approves before this ring opens.")

    def row(self) -> dict:
        d = self.cleaned_data
        return {"segment_kind": d["segment_kind"], "segment_value": d["segment_value"],
                "exposure_percent": d["exposure_percent"], "min_soak": timedelta(minutes=d["min_soak_minutes"]),
                "approval_point": d["approval_point"]}

    @staticmethod
    def initial_of(plan: RolloutPlan) -> list[dict]:
        return [{"segment_kind": r.segment_kind, "segment_value": r.segment_value,
                 "exposure_percent": r.exposure_percent,
                 "min_soak_minutes": int(r.min_soak.total_seconds() // 60), "approval_point": r.approval_point}
                for r in plan.rings.all()]


class RuleForm(forms.Form):
    metric = forms.ModelChoiceField(queryset=Metric.objects.all(), to_field_name="slug")
    operator = forms.ChoiceField(choices=BLANK + Operator.choices)
    threshold = forms.DecimalField(**THRESHOLD)
    min_samples = forms.IntegerField(label="Minimum samples", min_value=1, max_value=1_000_000)

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


def _blank_means(default: object) -> dict:
    return {"required": False, "widget": forms.NumberInput(attrs={"placeholder": str(default)})}


class TriggerForm(RuleForm):
    """A rollback trigger. The breach rules are optional: left blank, each takes the default shown."""

    off_hours_threshold = forms.DecimalField(required=False, help_text="Outside business hours, if different.",
                                             **THRESHOLD)
    sustained_minutes = forms.IntegerField(label="Sustained for (min)", min_value=1, max_value=MINUTES["max_value"])
    severity = forms.ChoiceField(choices=BLANK + Severity.choices)
    breach_statistic = forms.ChoiceField(label="Breach statistic", required=False,
                                         choices=[("", "share (default)"), *BreachStatistic.choices])
    breach_share = forms.IntegerField(label="Share beyond (%)", min_value=1, max_value=100, **_blank_means(50))
    flap_breaches = forms.IntegerField(label="Flapping: breaching windows", min_value=0, max_value=MAX_FLAP_WINDOWS,
                                       **_blank_means(3))
    flap_windows = forms.IntegerField(label="… of the last windows", min_value=0, max_value=MAX_FLAP_WINDOWS,
                                      **_blank_means(5))
    lateness_seconds = forms.IntegerField(label="Allowed lateness (s)", min_value=0, max_value=24 * 3600,
                                          **_blank_means(300))
    no_data_minutes = forms.IntegerField(label="Signals lost after (min)", min_value=1, max_value=MINUTES["max_value"],
                                         **_blank_means("2 × sustained"))
    on_no_data = forms.ChoiceField(label="When signals are lost", required=False, choices=NoDataAction.choices)
    reask_worse_percent = forms.IntegerField(label="Re-ask when worse by (% of threshold)", min_value=1,
                                             max_value=1000, **_blank_means(25))
    on_silence = forms.ChoiceField(label="When nobody answers", required=False,
                                   choices=[("", "pause and ask again (default)"), *SilenceAction.choices])
    field_order = ["metric", "operator", "threshold", "off_hours_threshold", "sustained_minutes", "min_samples",
                   "severity", "breach_statistic", "breach_share", "flap_breaches", "flap_windows", "lateness_seconds",
                   "no_data_minutes", "on_no_data", "reask_worse_percent", "on_silence"]
    OPTIONAL = ("breach_statistic", "breach_share", "flap_breaches", "flap_windows", "reask_worse_percent",
                "on_no_data", "on_silence")
    # The editor folds these away under "Breach rules": blank takes the default shown.
    FOLDED = ("breach_statistic", "breach_share", "flap_breaches", "flap_windows", "lateness_seconds",
              "no_data_minutes", "on_no_data", "reask_worse_percent", "on_silence")

    def clean(self) -> dict:
        data = super().clean()
        sustained, no_data = data.get("sustained_minutes"), data.get("no_data_minutes")
        if sustained and no_data and no_data < sustained:
            self.add_error("no_data_minutes", "Signals can only be lost after at least the sustained-for time.")
        breaches = data.get("flap_breaches")
        windows = data.get("flap_windows")
        if breaches is not None and breaches > (windows if windows is not None else 5):
            self.add_error("flap_breaches", "No more breaching windows than windows.")
        return data

    def row(self) -> dict:
        d = self.cleaned_data
        row = {"metric": d["metric"], "operator": d["operator"], "threshold": d["threshold"],
               "off_hours_threshold": d["off_hours_threshold"],
               "sustained_for": timedelta(minutes=d["sustained_minutes"]),
               "min_samples": d["min_samples"], "severity": d["severity"]}
        row.update({name: d[name] for name in self.OPTIONAL if d.get(name) not in (None, "")})
        if d.get("lateness_seconds") is not None:
            row["allowed_lateness"] = timedelta(seconds=d["lateness_seconds"])
        if d.get("no_data_minutes") is not None:
            row["no_data_after"] = timedelta(minutes=d["no_data_minutes"])
        return row

    @staticmethod
    def initial_of(plan: RolloutPlan) -> list[dict]:
        return [{"metric": t.metric.slug, "operator": t.operator, "threshold": t.threshold,
                 "off_hours_threshold": t.off_hours_threshold,
                 "sustained_minutes": int(t.sustained_for.total_seconds() // 60),
                 "min_samples": t.min_samples, "severity": t.severity, "breach_statistic": t.breach_statistic,
                 "breach_share": t.breach_share, "flap_breaches": t.flap_breaches, "flap_windows": t.flap_windows,
                 "lateness_seconds": int(t.allowed_lateness.total_seconds()),
                 "no_data_minutes": int(t.no_data_after.total_seconds() // 60) if t.no_data_after else None,
                 "on_no_data": t.on_no_data, "reask_worse_percent": t.reask_worse_percent, "on_silence": t.on_silence}
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


class MetricForm(forms.Form):
    """A custom metric; the service refuses a built-in slug and checks the rest against the model."""

    slug = forms.CharField(max_length=63, help_text="As signals name it, e.g. refund_error_rate. Lowercase letters, "
                                                   "digits, '-' and '_'.")
    label = forms.CharField(max_length=100)
    unit = forms.CharField(max_length=20, required=False, help_text="e.g. ms, USD, count; empty for a ratio.")
    direction = forms.ChoiceField(choices=Metric.Direction.choices, initial=Metric.Direction.LOWER_IS_BETTER)
