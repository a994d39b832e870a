"""Rollout plans, their rings, criteria, triggers and context tags; signals; rollout actions.

States are enums that the database also enforces; the allowed transitions are data
(`RolloutPlan.TRANSITIONS`, `RolloutAction.TRANSITIONS`) read by the services and the pages.
No I/O, no logic in save().
"""

from __future__ import annotations

import sys
from datetime import datetime, timedelta
from decimal import Decimal

from django.conf import settings
from django.core.validators import MaxValueValidator, MinValueValidator, RegexValidator
from django.db import models
from django.db.models import Q, Value
from django.db.models.functions import Coalesce
from django.urls import reverse

from governance.models import ContainmentAssignment, ServiceAccount, Workflow, slug_validator
from rollouts.evaluation import duration_label

FLOAT_MAX = sys.float_info.max
version_validator = RegexValidator(r"^[A-Za-z0-9][A-Za-z0-9._+:/-]{0,99}$", "Use letters, digits and . _ + : / -.")


def _choices_check(field: str, choices: type[models.TextChoices], name: str) -> models.CheckConstraint:
    return models.CheckConstraint(condition=Q(**{f"{field}__in": choices.values}), name=name)


class MetricDirection(models.TextChoices):
    HIGHER_IS_BETTER = "higher_is_better", "higher is better"
    LOWER_IS_BETTER = "lower_is_better", "lower is better"


class Metric(models.Model):
    """A metric slug signals may carry. Built-ins come with the app; custom slugs are registered."""

    Direction = MetricDirection

    slug = models.CharField(max_length=63, unique=True, validators=[slug_validator])
    label = models.CharField(max_length=100)
    unit = models.CharField(max_length=20, blank=True)
    direction = models.CharField(max_length=20, choices=Direction.choices, default=Direction.LOWER_IS_BETTER)
    builtin = models.BooleanField(default=False)

    class Meta:
        ordering = ["slug"]
        constraints = [_choices_check("direction", MetricDirection, "metric_direction_valid")]

    def __str__(self) -> str:
        return self.slug

    @property
    def is_latency(self) -> bool:
        return self.slug.startswith("latency")

    @property
    def is_cost(self) -> bool:
        return self.slug.startswith("cost")


class FallbackMode(models.TextChoices):
    HUMAN_REVIEW = "human_review", "human review"
    MANUAL_PATH = "manual_path", "manual path"
    PREVIOUS_VERSION = "previous_version", "previous version"
    SIMPLER_ROUTE = "simpler_route", "simpler route"
    REDUCED_CONTEXT = "reduced_context", "reduced context"
    READ_ONLY = "read_only", "read-only"


class Operator(models.TextChoices):
    LT = "lt", "<"
    LTE = "lte", "≤"
    GT = "gt", ">"
    GTE = "gte", "≥"


class PlanState(models.TextChoices):
    DRAFT = "draft"
    READY = "ready"
    ACTIVE = "active"
    PAUSED = "paused"
    FALLBACK = "fallback"
    COMPLETED = "completed"
    ROLLED_BACK = "rolled_back", "rolled back"


class PlanExecutor(models.TextChoices):
    FLAG = "flag", "flag (route API)"
    WEBHOOK = "webhook", "signed webhook"


class RolloutPlan(models.Model):
    """A release of a workflow, rolled out ring by ring, with the stable version to return to."""

    State = PlanState
    Executor = PlanExecutor

    # The plan's state machine, written once. `fallback` and `rolled_back` are reached from any
    # live state; a plan in fallback returns to active or is rolled back.
    LIVE_STATES = frozenset({State.ACTIVE, State.PAUSED, State.FALLBACK})
    TRANSITIONS: dict[str, frozenset[str]] = {
        State.DRAFT: frozenset({State.READY}),
        State.READY: frozenset({State.DRAFT, State.ACTIVE}),
        State.ACTIVE: frozenset({State.PAUSED, State.COMPLETED, State.FALLBACK, State.ROLLED_BACK}),
        State.PAUSED: frozenset({State.ACTIVE, State.FALLBACK, State.ROLLED_BACK}),
        State.FALLBACK: frozenset({State.ACTIVE, State.ROLLED_BACK}),
        State.COMPLETED: frozenset(),
        State.ROLLED_BACK: frozenset(),
    }
    EDITABLE_STATES = frozenset({State.DRAFT, State.READY})

    workflow = models.ForeignKey(Workflow, on_delete=models.PROTECT, related_name="rollout_plans")
    name = models.CharField(max_length=200)
    release_version = models.CharField(max_length=100, validators=[version_validator])
    stable_version = models.CharField(max_length=100, validators=[version_validator])
    fallback_mode = models.CharField(max_length=20, choices=FallbackMode.choices, blank=True)
    executor = models.CharField(max_length=10, choices=Executor.choices, default=Executor.FLAG)
    webhook_url = models.URLField(blank=True, max_length=500)
    notes = models.TextField(blank=True)
    state = models.CharField(max_length=20, choices=State.choices, default=State.DRAFT)
    current_ring = models.PositiveSmallIntegerField(null=True, blank=True)
    ring_opened_at = models.DateTimeField(null=True, blank=True)
    # Exposure lowered below the current ring's by a "narrow" (percent), until the next ring opens.
    exposure_override = models.PositiveSmallIntegerField(null=True, blank=True)
    active_fallback_mode = models.CharField(max_length=20, choices=FallbackMode.choices, blank=True)
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="+")
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)
    started_at = models.DateTimeField(null=True, blank=True)
    closed_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        constraints = [
            _choices_check("state", PlanState, "plan_state_valid"),
            _choices_check("executor", PlanExecutor, "plan_executor_valid"),
            models.CheckConstraint(condition=Q(fallback_mode="") | Q(fallback_mode__in=FallbackMode.values),
                                   name="plan_fallback_mode_valid"),
            models.CheckConstraint(
                condition=(Q(state="fallback") & Q(active_fallback_mode__in=FallbackMode.values))
                | (~Q(state="fallback") & Q(active_fallback_mode="")),
                name="plan_fallback_mode_iff_in_fallback",
            ),
            models.CheckConstraint(condition=~Q(executor="webhook") | ~Q(webhook_url=""), name="plan_webhook_has_url"),
            models.CheckConstraint(
                condition=Q(state__in=["draft", "ready"]) | Q(current_ring__isnull=False) | Q(state="rolled_back"),
                name="plan_live_has_ring",
            ),
            models.CheckConstraint(
                condition=Q(exposure_override__isnull=True)
                | (Q(exposure_override__gte=0) & Q(exposure_override__lte=100)),
                name="plan_exposure_override_range",
            ),
            # One live rollout per workflow: the route API must never have two answers.
            models.UniqueConstraint(fields=["workflow"], condition=Q(state__in=["active", "paused", "fallback"]),
                                    name="plan_one_live_per_workflow"),
        ]
        indexes = [models.Index(fields=["state"], name="plan_state_idx",
                                condition=Q(state__in=["active", "paused", "fallback"]))]

    def __str__(self) -> str:
        return f"{self.workflow.slug} {self.release_version}"

    def get_absolute_url(self) -> str:
        return reverse("rollouts:plan_detail", args=[self.pk])

    def can_become(self, state: str) -> bool:
        return state in self.TRANSITIONS.get(self.state, frozenset())

    @property
    def is_live(self) -> bool:
        return self.state in self.LIVE_STATES

    @property
    def is_editable(self) -> bool:
        return self.state in self.EDITABLE_STATES


class SegmentKind(models.TextChoices):
    INTERNAL_TEAM = "internal_team", "internal team"
    CUSTOMER_GROUP = "customer_group", "customer group"
    ACCOUNT_TYPE = "account_type", "account type"
    WORKFLOW_PATH = "workflow_path", "workflow path"
    USER_ROLE = "user_role", "user role"
    TRAFFIC_SLICE = "traffic_slice", "traffic slice"


class Ring(models.Model):
    """One step of exposure: a segment, the share of its traffic, and the minimum soak."""

    SegmentKind = SegmentKind

    plan = models.ForeignKey(RolloutPlan, on_delete=models.CASCADE, related_name="rings")
    order = models.PositiveSmallIntegerField()
    segment_kind = models.CharField(max_length=20, choices=SegmentKind.choices)
    segment_value = models.CharField(max_length=100)
    exposure_percent = models.PositiveSmallIntegerField(
        default=100, validators=[MinValueValidator(1), MaxValueValidator(100)]
    )
    min_soak = models.DurationField(default=timedelta(hours=1))
    # An approval point: opening this ring always waits for a person, whatever the tier.
    approval_point = models.BooleanField(default=False)

    class Meta:
        ordering = ["plan", "order"]
        constraints = [
            models.UniqueConstraint(fields=["plan", "order"], name="ring_unique_order"),
            _choices_check("segment_kind", SegmentKind, "ring_segment_kind_valid"),
            models.CheckConstraint(condition=Q(exposure_percent__gte=1) & Q(exposure_percent__lte=100),
                                   name="ring_exposure_range"),
            models.CheckConstraint(condition=Q(min_soak__gte=timedelta(0)), name="ring_soak_not_negative"),
        ]

    def __str__(self) -> str:
        return f"ring {self.order}: {self.segment}"

    @property
    def segment(self) -> str:
        return f"{self.segment_kind}:{self.segment_value}"

    @property
    def min_soak_label(self) -> str:
        return duration_label(self.min_soak)

    def matches(self, kind: str, value: str) -> bool:
        """A traffic slice covers every segment; other kinds match their own segment only."""
        if self.segment_kind == self.SegmentKind.TRAFFIC_SLICE:
            return True
        return self.segment_kind == kind and self.segment_value == value


class ThresholdRule(models.Model):
    """A metric compared with a threshold over a window of at least `min_samples` samples."""

    metric = models.ForeignKey(Metric, on_delete=models.PROTECT, related_name="+")
    operator = models.CharField(max_length=3, choices=Operator.choices)
    threshold = models.DecimalField(max_digits=18, decimal_places=6)

    class Meta:
        abstract = True
        ordering = ["plan", "id"]
        constraints = [
            _choices_check("operator", Operator, "%(class)s_operator_valid"),
            models.CheckConstraint(condition=Q(min_samples__gte=1), name="%(class)s_min_samples_positive"),
        ]

    def __str__(self) -> str:
        return f"{self.metric.slug} {self.get_operator_display()} {self.threshold.normalize():f}"


class ExpansionCriterion(ThresholdRule):
    """Must hold over its window (and the ring's soak) before the next ring opens."""

    plan = models.ForeignKey(RolloutPlan, on_delete=models.CASCADE, related_name="criteria")
    window = models.DurationField(default=timedelta(minutes=30))
    min_samples = models.PositiveIntegerField(default=30, validators=[MinValueValidator(1)])

    class Meta(ThresholdRule.Meta):
        constraints = [
            *ThresholdRule.Meta.constraints,
            models.CheckConstraint(condition=Q(window__gt=timedelta(0)), name="criterion_window_positive"),
        ]


class Severity(models.TextChoices):
    WARNING = "warning", "warning · engage fallback"
    CRITICAL = "critical", "critical · roll back"


class BreachStatistic(models.TextChoices):
    SHARE = "share", "share of samples beyond the threshold"
    MEAN = "mean", "window mean beyond the threshold"


class NoDataAction(models.TextChoices):
    BY_SEVERITY = "", "by severity (pause if critical, notify if warning)"
    NOTIFY = "notify", "notify the containment owners"
    PAUSE = "pause", "pause the rollout"
    ROLLBACK = "rollback", "roll back (as the tier says)"


class SilenceAction(models.TextChoices):
    PAUSE = "pause", "pause the rollout and ask again"
    ASK = "ask", "ask again"


DEFAULT_ALLOWED_LATENESS = timedelta(minutes=5)
MAX_FLAP_WINDOWS = 20


class RollbackTrigger(ThresholdRule):
    """Fires when the metric breaches the threshold over `sustained_for` by its breach statistic,
    or keeps breaching in `flap_breaches` of the last `flap_windows` windows (flapping).

    Windows are measured on the samples' own time, up to the newest sample (the watermark); a
    sample received more than `allowed_lateness` after it was measured is too late to count.
    Fewer than `min_samples` samples received within `no_data_after` is "signals lost": the
    owners are told and `on_no_data` is done (rollouts/evaluation.py has the rules).
    """

    Severity = Severity
    Statistic = BreachStatistic
    NoData = NoDataAction
    Silence = SilenceAction

    plan = models.ForeignKey(RolloutPlan, on_delete=models.CASCADE, related_name="triggers")
    # Outside the workflow's business hours a different threshold may apply (e.g. tighter at night).
    off_hours_threshold = models.DecimalField(max_digits=18, decimal_places=6, null=True, blank=True)
    sustained_for = models.DurationField(default=timedelta(minutes=5))
    min_samples = models.PositiveIntegerField(default=3, validators=[MinValueValidator(1)])
    severity = models.CharField(max_length=10, choices=Severity.choices, default=Severity.CRITICAL)
    breach_statistic = models.CharField(max_length=10, choices=BreachStatistic.choices, default=BreachStatistic.SHARE)
    # With the share statistic: the percent of the window's samples that must be beyond the threshold
    # (50: the window's median is beyond it; 100: every sample, the rule before these settings).
    breach_share = models.PositiveSmallIntegerField(default=50,
                                                    validators=[MinValueValidator(1), MaxValueValidator(100)])
    # Flapping: fires when at least `flap_breaches` of the last `flap_windows` sustained-for windows
    # had their median (or, with the mean statistic, their mean) beyond the threshold; 0 turns it off.
    # It matters most with a share above 50 %: no single window is that consistent, yet it keeps coming back.
    flap_windows = models.PositiveSmallIntegerField(default=5, validators=[MaxValueValidator(MAX_FLAP_WINDOWS)])
    flap_breaches = models.PositiveSmallIntegerField(default=3)
    allowed_lateness = models.DurationField(default=DEFAULT_ALLOWED_LATENESS)
    # None: twice the sustained-for time.
    no_data_after = models.DurationField(null=True, blank=True)
    on_no_data = models.CharField(max_length=10, choices=NoDataAction.choices, blank=True, default="")
    # After a person rejected or overrode a proposal of this trigger, it is proposed again before the
    # cool-down ends only when the window's mean moved this percent of the threshold further beyond.
    reask_worse_percent = models.PositiveSmallIntegerField(
        default=25, validators=[MinValueValidator(1), MaxValueValidator(1000)])
    # A rollback or fallback request of this trigger that ran out with nobody answering (a gate's
    # escalation expired) is no rejection: it is asked again at once, and an active rollout pauses.
    on_silence = models.CharField(max_length=10, choices=SilenceAction.choices, default=SilenceAction.PAUSE)

    class Meta(ThresholdRule.Meta):
        constraints = [
            *ThresholdRule.Meta.constraints,
            _choices_check("severity", Severity, "trigger_severity_valid"),
            models.CheckConstraint(condition=Q(sustained_for__gt=timedelta(0)), name="trigger_sustained_positive"),
            _choices_check("breach_statistic", BreachStatistic, "trigger_statistic_valid"),
            models.CheckConstraint(condition=Q(breach_share__gte=1) & Q(breach_share__lte=100),
                                   name="trigger_breach_share_range",
                                   violation_error_message="The breach share is a percent between 1 and 100."),
            models.CheckConstraint(condition=Q(flap_windows__lte=MAX_FLAP_WINDOWS)
                                   & Q(flap_breaches__lte=models.F("flap_windows")),
                                   name="trigger_flap_k_of_m",
                                   violation_error_message=f"Flapping: at most {MAX_FLAP_WINDOWS} windows, and no more "
                                                           "breaching windows than windows."),
            models.CheckConstraint(condition=Q(allowed_lateness__gte=timedelta(0)),
                                   name="trigger_lateness_not_negative",
                                   violation_error_message="The allowed lateness cannot be negative."),
            models.CheckConstraint(condition=Q(no_data_after__isnull=True)
                                   | Q(no_data_after__gte=models.F("sustained_for")),
                                   name="trigger_no_data_after_covers_window",
                                   violation_error_message="No data after must be at least the sustained-for time."),
            models.CheckConstraint(condition=Q(on_no_data="") | Q(on_no_data__in=["notify", "pause", "rollback"]),
                                   name="trigger_on_no_data_valid"),
            models.CheckConstraint(condition=Q(reask_worse_percent__gte=1) & Q(reask_worse_percent__lte=1000),
                                   name="trigger_reask_worse_range",
                                   violation_error_message="Re-ask when worse by a percent between 1 and 1000."),
            _choices_check("on_silence", SilenceAction, "trigger_on_silence_valid"),
        ]

    @property
    def effective_no_data_after(self) -> timedelta:
        return self.no_data_after if self.no_data_after is not None else 2 * self.sustained_for

    @property
    def effective_on_no_data(self) -> str:
        if self.on_no_data:
            return self.on_no_data
        return NoDataAction.PAUSE if self.severity == Severity.CRITICAL else NoDataAction.NOTIFY

    @property
    def flapping_enabled(self) -> bool:
        return self.flap_breaches > 0 and self.flap_windows > 0

    def settings_label(self) -> str:
        """The breach rules in a line, for the plan page and the audit trail."""
        statistic = (f"≥ {self.breach_share} % of samples beyond" if self.breach_statistic == BreachStatistic.SHARE
                     else "window mean beyond")
        flap = (f"flapping {self.flap_breaches} of {self.flap_windows} windows" if self.flapping_enabled
                else "no flapping rule")
        return (f"{statistic}; {flap}; late after {duration_label(self.allowed_lateness)}; no data after "
                f"{duration_label(self.effective_no_data_after)} → {self.effective_on_no_data}; "
                f"unanswered → {self.on_silence}")


class TagKind(models.TextChoices):
    EXPECTED_LATENCY_INCREASE = "expected_latency_increase", "expected latency increase"
    EXPECTED_COST_INCREASE = "expected_cost_increase", "expected cost increase"
    EXPECTED_CHANGE = "expected_change", "expected change of a metric"
    MIGRATION_WINDOW = "migration_window", "migration window"
    MAINTENANCE_WINDOW = "maintenance_window", "maintenance window"


class ContextTag(models.Model):
    """What a deployment is expected to change, for how long, and why.

    A tag with a metric and an expected change widens that metric's thresholds by the change;
    a window tag (no metric) turns every automatic rollback in its window into a recommendation.
    """

    Kind = TagKind

    WINDOW_KINDS = frozenset({Kind.MIGRATION_WINDOW, Kind.MAINTENANCE_WINDOW})

    workflow = models.ForeignKey(Workflow, on_delete=models.CASCADE, related_name="context_tags")
    plan = models.ForeignKey(RolloutPlan, on_delete=models.CASCADE, null=True, blank=True, related_name="context_tags")
    kind = models.CharField(max_length=30, choices=Kind.choices)
    metric = models.ForeignKey(Metric, on_delete=models.PROTECT, null=True, blank=True, related_name="+")
    expected_change_percent = models.DecimalField(
        max_digits=7, decimal_places=2, null=True, blank=True,
        validators=[MinValueValidator(Decimal("0.01")), MaxValueValidator(Decimal("1000"))],
    )
    starts_at = models.DateTimeField()
    ends_at = models.DateTimeField()
    reason = models.TextField()
    author = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.PROTECT,
                               related_name="+")
    author_service = models.ForeignKey(ServiceAccount, null=True, blank=True, on_delete=models.PROTECT,
                                       related_name="+")
    created_at = models.DateTimeField(auto_now_add=True)
    withdrawn_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-starts_at", "-id"]
        constraints = [
            _choices_check("kind", TagKind, "tag_kind_valid"),
            models.CheckConstraint(condition=Q(starts_at__lt=models.F("ends_at")), name="tag_window_ordered"),
            models.CheckConstraint(
                condition=Q(kind__in=["migration_window", "maintenance_window"])
                | (Q(metric__isnull=False) & Q(expected_change_percent__gt=0)),
                name="tag_change_has_metric_and_size",
            ),
            models.CheckConstraint(condition=Q(author__isnull=False) | Q(author_service__isnull=False),
                                   name="tag_has_author"),
            models.CheckConstraint(condition=~Q(reason=""), name="tag_has_reason"),
        ]
        indexes = [models.Index(fields=["workflow", "ends_at"], name="tag_workflow_ends_idx")]

    def __str__(self) -> str:
        return self.label

    @property
    def label(self) -> str:
        if self.kind in self.WINDOW_KINDS:
            return f"{self.kind}: true"
        return f"{self.kind}: {self.expected_change_percent.normalize():f}%"

    @property
    def author_label(self) -> str:
        if self.author_id:
            return self.author.get_username()
        return self.author_service.name if self.author_service_id else "?"

    def in_force(self, at: datetime) -> bool:
        return self.withdrawn_at is None and self.starts_at <= at < self.ends_at


class Signal(models.Model):
    """One metric sample of a plan. High volume: inserted in bulk, read by (plan, metric, time).

    The unique key doubles as the index for windowed reads; a sample sent again with the same
    (plan, metric, time, segment) is a duplicate and is not stored twice (first value wins).
    """

    plan = models.ForeignKey(RolloutPlan, on_delete=models.CASCADE, related_name="signals", db_index=False)
    metric = models.ForeignKey(Metric, on_delete=models.PROTECT, related_name="+", db_index=False)
    ring = models.PositiveSmallIntegerField(null=True, blank=True)
    segment = models.CharField(max_length=120, blank=True)
    observed_at = models.DateTimeField()
    value = models.FloatField()
    received_at = models.DateTimeField()
    # Received more than its metric's allowed lateness after it was measured: stored, never counted.
    late = models.BooleanField(default=False, db_default=False)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["plan", "metric", "observed_at", "segment"], name="signal_unique_sample"),
            # NaN compares above every number in PostgreSQL and infinities are outside this range,
            # so the database itself refuses non-finite values: a NaN can never disarm a trigger.
            models.CheckConstraint(condition=Q(value__gte=-FLOAT_MAX) & Q(value__lte=FLOAT_MAX),
                                   name="signal_value_finite"),
        ]
        indexes = [models.Index(fields=["plan", "metric"], condition=Q(late=True), name="signal_late_idx")]

    def __str__(self) -> str:
        return f"{self.metric_id}={self.value} @{self.observed_at:%H:%M:%S}"


class SignalLoss(models.Model):
    """"Signals lost": a trigger of a live plan had fewer than its minimum samples within its
    `no_data_after`. Raised once (the owners are told, the trigger's `on_no_data` is done, expansion
    freezes) and closed when samples are back; written only by rollouts.signals."""

    plan = models.ForeignKey(RolloutPlan, on_delete=models.CASCADE, related_name="signal_losses")
    trigger = models.ForeignKey(RollbackTrigger, null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    metric = models.ForeignKey(Metric, on_delete=models.PROTECT, related_name="+")
    rule = models.CharField(max_length=300)
    # When the trigger last had enough samples (or the plan started), and when that was noticed.
    since = models.DateTimeField()
    detected_at = models.DateTimeField()
    restored_at = models.DateTimeField(null=True, blank=True)
    on_no_data = models.CharField(max_length=10, choices=NoDataAction.choices)
    outcome = models.CharField(max_length=300, blank=True)
    evidence = models.JSONField(default=dict, blank=True)
    notified_at = models.DateTimeField(null=True, blank=True)
    notified = models.PositiveSmallIntegerField(default=0)

    class Meta:
        ordering = ["-detected_at", "-id"]
        constraints = [
            models.UniqueConstraint(fields=["plan", "trigger"], condition=Q(restored_at__isnull=True),
                                    name="signal_loss_one_open_per_trigger"),
            models.CheckConstraint(condition=Q(restored_at__isnull=True) | Q(restored_at__gte=models.F("detected_at")),
                                   name="signal_loss_restored_after_detected"),
            models.CheckConstraint(condition=Q(on_no_data__in=["notify", "pause", "rollback"]),
                                   name="signal_loss_action_valid"),
        ]
        indexes = [models.Index(fields=["plan"], condition=Q(restored_at__isnull=True), name="signal_loss_open_idx")]

    def __str__(self) -> str:
        return f"signals lost on {self.rule} since {self.since:%H:%M:%S}"

    @property
    def is_open(self) -> bool:
        return self.restored_at is None


class ActionKind(models.TextChoices):
    EXPAND = "expand"
    NARROW = "narrow"
    PAUSE = "pause"
    RESUME = "resume"
    FALLBACK = "fallback"
    ROLLBACK = "rollback"
    COMPLETE = "complete"


class ActionState(models.TextChoices):
    PENDING_APPROVAL = "pending_approval", "waiting for approval"
    SCHEDULED = "scheduled", "scheduled"
    EXECUTING = "executing"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"


class ActionOrigin(models.TextChoices):
    PERSON = "person"
    TRIGGER = "trigger", "rollback trigger"
    CRITERIA = "criteria", "expansion criteria"
    AGENT = "agent", "agent proposal"


class ActionExecutor(models.TextChoices):
    NONE = "none", "state change"
    FLAG = "flag"
    WEBHOOK = "webhook"


class RolloutAction(models.Model):
    """Expand, narrow, pause, resume, fallback, rollback or complete: who asked, through which
    approval, which executor, its attempts, the idempotency key, the result and the evidence."""

    Kind = ActionKind
    State = ActionState
    Origin = ActionOrigin
    Executor = ActionExecutor

    OPEN_STATES = frozenset({State.PENDING_APPROVAL, State.SCHEDULED, State.EXECUTING})
    # Created in its first state; afterwards changed only by rollouts.actions.move_action, which
    # checks this table and writes the transition's audit event.
    TRANSITIONS: dict[str, frozenset[str]] = {
        State.PENDING_APPROVAL: frozenset({State.SCHEDULED, State.SUCCEEDED, State.CANCELLED}),
        State.SCHEDULED: frozenset({State.EXECUTING, State.CANCELLED}),
        State.EXECUTING: frozenset({State.SUCCEEDED, State.FAILED}),
        State.SUCCEEDED: frozenset(),
        State.FAILED: frozenset(),
        State.CANCELLED: frozenset(),
    }

    plan = models.ForeignKey(RolloutPlan, on_delete=models.PROTECT, related_name="actions")
    kind = models.CharField(max_length=10, choices=Kind.choices)
    state = models.CharField(max_length=20, choices=State.choices)
    origin = models.CharField(max_length=10, choices=Origin.choices)
    requested_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.PROTECT,
                                     related_name="+")
    requested_by_service = models.ForeignKey(ServiceAccount, null=True, blank=True, on_delete=models.PROTECT,
                                             related_name="+")
    trigger = models.ForeignKey(RollbackTrigger, null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    # The autonomy tier in force when it was proposed and how it was handled (execute, override
    # window, gate, or "direct" for a person acting on their own duty).
    tier = models.PositiveSmallIntegerField(null=True, blank=True)
    handling = models.CharField(max_length=20, blank=True)
    approval_request = models.ForeignKey("approvals.ApprovalRequest", null=True, blank=True, on_delete=models.PROTECT,
                                         related_name="rollout_actions")
    executor = models.CharField(max_length=10, choices=Executor.choices, default=Executor.NONE)
    idempotency_key = models.CharField(max_length=100, unique=True)
    client_key = models.CharField(max_length=200, blank=True)
    parameters = models.JSONField(default=dict, blank=True)
    evidence = models.JSONField(default=dict, blank=True)
    confidence = models.DecimalField(max_digits=4, decimal_places=3, null=True, blank=True,
                                     validators=[MinValueValidator(0), MaxValueValidator(1)])
    reason = models.TextField(blank=True)
    result = models.JSONField(default=dict, blank=True)
    attempts = models.PositiveSmallIntegerField(default=0)
    next_attempt_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField()
    closed_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        constraints = [
            _choices_check("kind", ActionKind, "action_kind_valid"),
            _choices_check("state", ActionState, "action_state_valid"),
            _choices_check("origin", ActionOrigin, "action_origin_valid"),
            _choices_check("executor", ActionExecutor, "action_executor_valid"),
            models.UniqueConstraint(fields=["requested_by_service", "client_key"], condition=~Q(client_key=""),
                                    name="action_unique_client_key"),
            models.CheckConstraint(
                condition=Q(state__in=["pending_approval", "scheduled", "executing"]) | Q(closed_at__isnull=False),
                name="action_closed_has_time",
            ),
        ]
        indexes = [
            models.Index(fields=["plan", "kind"], condition=Q(state__in=["pending_approval", "scheduled", "executing"]),
                         name="action_open_idx"),
            models.Index(fields=["next_attempt_at"], condition=Q(state__in=["scheduled", "executing"]),
                         name="action_due_idx"),
        ]

    def __str__(self) -> str:
        return f"{self.kind} #{self.pk} ({self.state})"

    def can_become(self, state: str) -> bool:
        return state in self.TRANSITIONS.get(self.state, frozenset())

    @property
    def is_open(self) -> bool:
        return self.state in self.OPEN_STATES

    @property
    def requester_label(self) -> str:
        if self.requested_by_id:
            return self.requested_by.get_username()
        if self.requested_by_service_id:
            return self.requested_by_service.name
        return f"system ({self.get_origin_display()})"


class AttemptOutcome(models.TextChoices):
    RUNNING = "running"
    OK = "ok"
    RETRYABLE_ERROR = "retryable_error", "error, will retry"
    FAILED = "failed"
    INTERRUPTED = "interrupted", "interrupted (worker lost)"


class ActionAttempt(models.Model):
    """One run of an executor for an action; written only by rollouts.execution."""

    Outcome = AttemptOutcome

    action = models.ForeignKey(RolloutAction, on_delete=models.CASCADE, related_name="attempt_log")
    number = models.PositiveSmallIntegerField()
    started_at = models.DateTimeField()
    lease_until = models.DateTimeField()
    finished_at = models.DateTimeField(null=True, blank=True)
    outcome = models.CharField(max_length=20, choices=Outcome.choices, default=Outcome.RUNNING)
    http_status = models.PositiveSmallIntegerField(null=True, blank=True)
    detail = models.TextField(blank=True)
    worker = models.CharField(max_length=200, blank=True)

    class Meta:
        ordering = ["action", "number"]
        constraints = [
            models.UniqueConstraint(fields=["action", "number"], name="attempt_unique_number"),
            _choices_check("outcome", AttemptOutcome, "attempt_outcome_valid"),
        ]

    def __str__(self) -> str:
        return f"attempt {self.number} of action {self.action_id}: {self.outcome}"


class ReviewVerdict(models.TextChoices):
    PENDING = "", "not reviewed yet"
    CORRECT = "correct"
    FALSE_POSITIVE = "false_positive", "false positive"


class ReviewReason(models.TextChoices):
    NONE = "", "—"
    EXPECTED_BEHAVIOUR = "expected_behaviour", "expected behaviour"
    NOISE = "noise"
    KNOWN_CHANGE = "known_change", "known change"
    OTHER = "other"


class ActionReview(models.Model):
    """Post-facto review of an action that ran without a person before it (tier 1, or an
    override window that ran out): correct, or a false positive with a reason category."""

    Verdict = ReviewVerdict
    Reason = ReviewReason

    # What ran: a rollout action, or an agent action dispatch allowed at tier 1 (its execution).
    action = models.OneToOneField(RolloutAction, null=True, blank=True, on_delete=models.CASCADE,
                                  related_name="review")
    execution = models.OneToOneField("approvals.Execution", null=True, blank=True, on_delete=models.PROTECT,
                                     related_name="review")
    workflow = models.ForeignKey(Workflow, on_delete=models.PROTECT, related_name="+")
    created_at = models.DateTimeField()
    verdict = models.CharField(max_length=20, choices=Verdict.choices, blank=True, default="")
    reason = models.CharField(max_length=20, choices=Reason.choices, blank=True, default="")
    note = models.TextField(blank=True)
    reviewed_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.PROTECT,
                                    related_name="+")
    reviewed_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        constraints = [
            _choices_check("verdict", ReviewVerdict, "review_verdict_valid"),
            _choices_check("reason", ReviewReason, "review_reason_valid"),
            models.CheckConstraint(condition=~Q(verdict="false_positive") | ~Q(reason=""),
                                   name="review_false_positive_has_reason"),
            models.CheckConstraint(condition=Q(action__isnull=True) ^ Q(execution__isnull=True),
                                   name="review_of_one_action_or_execution"),
            models.CheckConstraint(
                condition=(Q(verdict="") & Q(reviewed_at__isnull=True) & Q(reviewed_by__isnull=True))
                | (~Q(verdict="") & Q(reviewed_at__isnull=False) & Q(reviewed_by__isnull=False)),
                name="review_reviewed_iff_verdict",
            ),
        ]
        indexes = [models.Index(fields=["workflow", "created_at"], name="review_pending_idx", condition=Q(verdict=""))]

    def __str__(self) -> str:
        what = f"action {self.action_id}" if self.action_id else f"execution {self.execution_id}"
        return f"review of {what}: {self.verdict or 'pending'}"

    @property
    def is_pending(self) -> bool:
        return self.verdict == ""


DUTY_FOR_ACTION = {
    RolloutAction.Kind.PAUSE: ContainmentAssignment.Duty.PAUSE,
    RolloutAction.Kind.RESUME: ContainmentAssignment.Duty.PAUSE,
    RolloutAction.Kind.NARROW: ContainmentAssignment.Duty.NARROW,
    RolloutAction.Kind.FALLBACK: ContainmentAssignment.Duty.FALLBACK,
    RolloutAction.Kind.ROLLBACK: ContainmentAssignment.Duty.ROLLBACK,
    RolloutAction.Kind.EXPAND: ContainmentAssignment.Duty.APPROVE_EXPANSION,
    RolloutAction.Kind.COMPLETE: ContainmentAssignment.Duty.APPROVE_EXPANSION,
}


# -- metric providers (rollouts.providers) ---------------------------------------------------------

class ProviderKind(models.TextChoices):
    PROMETHEUS = "prometheus", "Prometheus (PromQL instant query)"
    DATADOG = "datadog", "Datadog (metrics query API)"
    WEB = "web", "web (JSON endpoint and a JSONPath)"


env_name_validator = RegexValidator(r"^[A-Z_][A-Z0-9_]{0,99}$", "The name of an environment variable (A-Z, 0-9, _).")


class MetricProvider(models.Model):
    """Where a metric's samples are pulled from instead of waiting for pushes.

    Credentials are never stored: `api_key_env`, `app_key_env` and the values of `headers` name the
    environment variables of the worker that hold them. The query (and the web URL) is a template
    over {{ segment }}, {{ segment_kind }}, {{ ring }}, {{ workflow }} and {{ window }}."""

    Kind = ProviderKind

    metric = models.OneToOneField(Metric, on_delete=models.CASCADE, related_name="provider")
    kind = models.CharField(max_length=20, choices=Kind.choices)
    # Prometheus: its base URL; Datadog: the site's API URL; web: the endpoint (a template).
    url = models.CharField(max_length=500)
    # Prometheus: PromQL; Datadog: a metrics query; web: the JSONPath to the value.
    query = models.TextField(max_length=4000)
    # Prometheus: the label naming the segment when the query answers one series per segment.
    segment_label = models.CharField(max_length=100, blank=True)
    api_key_env = models.CharField(max_length=100, blank=True, validators=[env_name_validator])
    app_key_env = models.CharField(max_length=100, blank=True, validators=[env_name_validator])
    headers = models.JSONField(default=dict, blank=True)  # header name → environment variable holding its value
    interval_seconds = models.PositiveIntegerField(default=60, validators=[MinValueValidator(1)])
    timeout_seconds = models.FloatField(default=10.0, validators=[MinValueValidator(0.1), MaxValueValidator(120)])
    # Consecutive failed fetches (of one plan) after which the plan's owners are told.
    max_failures = models.PositiveSmallIntegerField(default=3, validators=[MinValueValidator(1)])

    class Meta:
        ordering = ["metric"]
        constraints = [
            _choices_check("kind", ProviderKind, "provider_kind_valid"),
            models.CheckConstraint(condition=Q(interval_seconds__gte=1), name="provider_interval_positive"),
            models.CheckConstraint(condition=Q(timeout_seconds__gte=0.1) & Q(timeout_seconds__lte=120),
                                   name="provider_timeout_range"),
            models.CheckConstraint(condition=Q(max_failures__gte=1), name="provider_max_failures_positive"),
            models.CheckConstraint(condition=~Q(kind="datadog") | (~Q(api_key_env="") & ~Q(app_key_env="")),
                                   name="provider_datadog_has_keys"),
        ]

    def __str__(self) -> str:
        return f"{self.metric_id} from {self.kind}"


class FetchStatus(models.TextChoices):
    RUNNING = "running"
    OK = "ok"
    ERROR = "error"
    EMPTY = "empty"
    TIMEOUT = "timeout"


class MetricFetch(models.Model):
    """One pull of a metric for a live plan: what was asked, how long it took, what came back.
    Written only by rollouts.providers; old rows are pruned (METRIC_FETCH_KEEP per plan and metric)."""

    Status = FetchStatus

    plan = models.ForeignKey(RolloutPlan, on_delete=models.CASCADE, related_name="metric_fetches")
    metric = models.ForeignKey(Metric, on_delete=models.CASCADE, related_name="+")
    ring = models.PositiveSmallIntegerField(null=True, blank=True)
    segment = models.CharField(max_length=120, blank=True)
    started_at = models.DateTimeField()
    duration_ms = models.PositiveIntegerField(default=0)
    status = models.CharField(max_length=10, choices=Status.choices, default=Status.RUNNING)
    value = models.FloatField(null=True, blank=True)
    error = models.CharField(max_length=500, blank=True)
    # Failed fetches in a row, this one included (0 after a success).
    failures = models.PositiveSmallIntegerField(default=0)

    class Meta:
        ordering = ["-started_at", "-id"]
        constraints = [
            _choices_check("status", FetchStatus, "fetch_status_valid"),
            models.CheckConstraint(condition=~Q(status="ok") | Q(value__isnull=False), name="fetch_ok_has_value"),
        ]
        indexes = [models.Index(fields=["plan", "metric", "-started_at"], name="fetch_plan_metric_idx")]

    def __str__(self) -> str:
        return f"{self.metric_id} for plan {self.plan_id} at {self.started_at:%H:%M:%S}: {self.status}"

    @property
    def failed(self) -> bool:
        return self.status in (FetchStatus.ERROR, FetchStatus.EMPTY, FetchStatus.TIMEOUT)


class SignalRollup(models.Model):
    """The samples of one minute of a plan's metric (per ring and segment) once they are older than
    SIGNAL_RETENTION_DAYS: their count, sum, minimum and maximum, kept when the samples themselves
    are deleted (rollouts.retention). Late samples, never counted, are not in them."""

    plan = models.ForeignKey(RolloutPlan, on_delete=models.CASCADE, related_name="signal_rollups", db_index=False)
    metric = models.ForeignKey(Metric, on_delete=models.PROTECT, related_name="+", db_index=False)
    ring = models.PositiveSmallIntegerField(null=True, blank=True)
    segment = models.CharField(max_length=120, blank=True)
    minute = models.DateTimeField()
    count = models.PositiveIntegerField()
    sum = models.FloatField()
    min = models.FloatField()
    max = models.FloatField()

    class Meta:
        constraints = [
            # One row per (plan, metric, minute, ring, segment), no ring counting as one ring. Minute before ring
            # and segment: the index also serves a plan's metric over time.
            models.UniqueConstraint("plan", "metric", "minute", Coalesce("ring", Value(-1)), "segment",
                                    name="signal_rollup_unique_minute"),
            models.CheckConstraint(condition=Q(count__gte=1) & Q(min__lte=models.F("max")),
                                   name="signal_rollup_consistent"),
        ]

    def __str__(self) -> str:
        return f"{self.metric_id} {self.minute:%Y-%m-%d %H:%M}: {self.count} samples"
