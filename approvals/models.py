"""Approval requests, the decisions people take on them, and the escalation policies that time them.

Evidence convention (what the queue shows at a glance; every key optional, extra keys are kept
and listed as they are):

    {"summary": "p95 latency above threshold for 10 min",
     "metrics": [{"metric": "latency_p95_ms", "value": 812, "operator": ">", "threshold": 600,
                  "window": "10m"}],
     "links": [{"label": "Dashboard", "url": "https://…"}]}
"""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from urllib.parse import urlsplit

from django.conf import settings
from django.contrib.auth.models import Group
from django.core.validators import RegexValidator
from django.db import models
from django.db.models import Q
from django.urls import reverse
from django.utils import timezone

from governance.models import GovernedAction, ServiceAccount, Workflow

MAX_JUSTIFICATION = 5000


class Mode(models.TextChoices):
    """`gate`: nothing happens without approval. `override_window`: it proceeds at the deadline
    unless a person overrides it."""

    GATE = "gate"
    OVERRIDE_WINDOW = "override_window", "override window"


class Kind(models.TextChoices):
    AGENT_ACTION = "agent_action", "agent action"
    EXPANSION = "expansion"
    ROLLBACK = "rollback"
    FALLBACK = "fallback"
    POLICY_CHANGE = "policy_change", "policy change"


class State(models.TextChoices):
    PENDING = "pending"
    APPROVED = "approved"
    REJECTED = "rejected"
    OVERRIDDEN = "overridden"
    AUTO_APPROVED = "auto_approved", "auto-approved"
    EXPIRED = "expired"
    CANCELLED = "cancelled"


class EscalationPolicy(models.Model):
    """Who is asked, for how long, level by level, and what happens when the last level runs out.

    A policy with no workflow is the default for every workflow; a workflow's own policy wins,
    and one for business or off hours wins over one for any time.
    """

    class Hours(models.TextChoices):
        ANY = "any", "any time"
        BUSINESS = "business", "business hours"
        OFF_HOURS = "off_hours", "off hours"

    class TerminalAction(models.TextChoices):
        REJECT = "reject", "reject (the request expires)"
        PROCEED = "proceed", "proceed (the request is auto-approved)"

    workflow = models.ForeignKey(Workflow, null=True, blank=True, on_delete=models.CASCADE,
                                 related_name="escalation_policies")
    hours = models.CharField(max_length=10, choices=Hours.choices, default=Hours.ANY)
    mode = models.CharField(max_length=20, choices=Mode.choices)
    terminal_action = models.CharField(max_length=10, choices=TerminalAction.choices)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        verbose_name_plural = "escalation policies"
        ordering = ["workflow__slug", "mode", "hours"]
        constraints = [
            models.UniqueConstraint(fields=["workflow", "hours", "mode"], condition=Q(workflow__isnull=False),
                                    name="escalation_policy_one_per_workflow_hours_mode"),
            models.UniqueConstraint(fields=["hours", "mode"], condition=Q(workflow__isnull=True),
                                    name="escalation_policy_one_default_per_hours_mode"),
            models.CheckConstraint(condition=Q(hours__in=["any", "business", "off_hours"]),
                                   name="escalation_policy_hours_valid"),
            models.CheckConstraint(condition=Q(mode__in=["gate", "override_window"]),
                                   name="escalation_policy_mode_valid"),
            # A gate never lets anything happen without a person: running out means rejection.
            models.CheckConstraint(
                condition=Q(terminal_action="reject") | Q(terminal_action="proceed", mode="override_window"),
                name="escalation_policy_terminal_valid",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.workflow.slug if self.workflow_id else 'default'} {self.mode} ({self.get_hours_display()})"


class EscalationLevel(models.Model):
    """One level of a policy: the people (by role group or by name) asked, and for how long."""

    policy = models.ForeignKey(EscalationPolicy, on_delete=models.CASCADE, related_name="levels")
    position = models.PositiveSmallIntegerField()
    groups = models.ManyToManyField(Group, blank=True, related_name="+")
    people = models.ManyToManyField(settings.AUTH_USER_MODEL, blank=True, related_name="+")
    timeout_seconds = models.PositiveIntegerField()
    # A level adds its people to those of the earlier levels, or replaces them from then on.
    replaces_previous = models.BooleanField(default=False)

    class Meta:
        ordering = ["policy", "position"]
        constraints = [
            models.UniqueConstraint(fields=["policy", "position"], name="escalation_level_unique_position"),
            models.CheckConstraint(condition=Q(timeout_seconds__gte=1) & Q(timeout_seconds__lte=7 * 24 * 3600),
                                   name="escalation_level_timeout_range"),
        ]

    def __str__(self) -> str:
        return f"level {self.position + 1}: {self.timeout_seconds} s"


class ApprovalRequestQuerySet(models.QuerySet):
    def pending(self) -> ApprovalRequestQuerySet:
        return self.filter(state=ApprovalRequest.State.PENDING)

    def overdue(self, now: datetime) -> ApprovalRequestQuerySet:
        """Pending requests whose level ran out; held ones (kill switch) wait for the resume."""
        return self.pending().filter(due_at__lte=now, held_at__isnull=True)

    def unclaimed(self, now: datetime) -> ApprovalRequestQuerySet:
        """Approved agent actions nobody claimed by their claim deadline."""
        return self.filter(claim_by__lte=now, claimed_at__isnull=True, claim_expired_at__isnull=True)


class ApprovalRequest(models.Model):
    """Something an agent, a person or a rollout asks permission for; decided by people or timers."""

    Kind = Kind
    Mode = Mode
    State = State

    # The allowed state changes, written once. Escalation keeps a request pending (level and due
    # time move), so it is not a state change.
    TRANSITIONS: dict[str, frozenset[str]] = {
        State.PENDING: frozenset({State.APPROVED, State.REJECTED, State.OVERRIDDEN, State.AUTO_APPROVED,
                                  State.EXPIRED, State.CANCELLED}),
        State.APPROVED: frozenset(),
        State.REJECTED: frozenset(),
        State.OVERRIDDEN: frozenset(),
        State.AUTO_APPROVED: frozenset(),
        State.EXPIRED: frozenset(),
        State.CANCELLED: frozenset(),
    }
    # What a person may answer, by mode: a gate is approved or rejected; an override window
    # proceeds at once (approve) or is stopped (override).
    VERDICTS = {
        Mode.GATE: ("approve", "reject"),
        Mode.OVERRIDE_WINDOW: ("approve", "override"),
    }
    # Kinds a containment owner (contain permission) may decide besides approvers.
    CONTAINMENT_KINDS = frozenset({Kind.EXPANSION, Kind.ROLLBACK, Kind.FALLBACK})

    workflow = models.ForeignKey(Workflow, on_delete=models.PROTECT, related_name="approval_requests")
    kind = models.CharField(max_length=20, choices=Kind.choices)
    action = models.CharField(max_length=100)
    parameters = models.JSONField(default=dict, blank=True)
    evidence = models.JSONField(default=dict, blank=True)
    confidence = models.DecimalField(max_digits=5, decimal_places=4, null=True, blank=True)
    requested_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.PROTECT,
                                     related_name="approval_requests")
    requested_by_service = models.ForeignKey(ServiceAccount, null=True, blank=True, on_delete=models.PROTECT,
                                             related_name="approval_requests")
    # The owner of the service account when it asked: four-eyes holds even if ownership moves later.
    on_behalf_of = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.PROTECT,
                                     related_name="+")
    requester_label = models.CharField(max_length=150)
    idempotency_key = models.CharField(max_length=255, blank=True)
    mode = models.CharField(max_length=20, choices=Mode.choices, default=Mode.GATE)
    policy = models.ForeignKey(EscalationPolicy, on_delete=models.PROTECT, related_name="requests")
    due_at = models.DateTimeField()
    remind_at = models.DateTimeField(null=True, blank=True)
    level = models.PositiveSmallIntegerField(default=0)
    quorum = models.PositiveSmallIntegerField(default=1)
    state = models.CharField(max_length=20, choices=State.choices, default=State.PENDING)
    created_at = models.DateTimeField()
    escalated_at = models.DateTimeField(null=True, blank=True)
    closed_at = models.DateTimeField(null=True, blank=True)
    closed_by_label = models.CharField(max_length=300, blank=True)
    subject_type = models.CharField(max_length=64, blank=True)
    subject_id = models.CharField(max_length=64, blank=True)
    # Bookkeeping of the outcome handlers other apps registered (approvals.outcomes).
    outcome_attempted_at = models.DateTimeField(null=True, blank=True)
    outcomes_done_at = models.DateTimeField(null=True, blank=True)
    # The dispatch rule that asked for this request: its id, text, outcome and the values it read.
    rule = models.JSONField(default=dict, blank=True)
    # Roles that must be among the approvers (each at least once), eligible from the first level.
    approver_roles = models.JSONField(default=list, blank=True)
    # Set while the workflow's kill switch holds the request: no decision, no timer.
    held_at = models.DateTimeField(null=True, blank=True)
    # An approved agent action is claimed (executed) once, by `claim_by`, or expires unclaimed.
    claim_by = models.DateTimeField(null=True, blank=True)
    claimed_at = models.DateTimeField(null=True, blank=True)
    claim_expired_at = models.DateTimeField(null=True, blank=True)

    objects = ApprovalRequestQuerySet.as_manager()

    class Meta:
        ordering = ["due_at", "pk"]
        indexes = [
            models.Index(fields=["due_at"], condition=Q(state="pending"), name="approval_pending_due_idx"),
            models.Index(fields=["remind_at"], condition=Q(state="pending"), name="approval_pending_remind_idx"),
            models.Index(fields=["workflow", "state"], name="approval_workflow_state_idx"),
            models.Index(fields=["subject_type", "subject_id"], name="approval_subject_idx"),
            models.Index(fields=["closed_at"], condition=Q(outcomes_done_at__isnull=True) & ~Q(state="pending"),
                         name="approval_outcomes_open_idx"),
            models.Index(fields=["claim_by"], condition=Q(claimed_at__isnull=True) & Q(claim_expired_at__isnull=True)
                         & Q(claim_by__isnull=False), name="approval_unclaimed_idx"),
        ]
        constraints = [
            models.CheckConstraint(condition=Q(state__in=State.values), name="approval_state_valid"),
            models.CheckConstraint(condition=Q(kind__in=Kind.values), name="approval_kind_valid"),
            models.CheckConstraint(condition=Q(mode__in=Mode.values), name="approval_mode_valid"),
            models.CheckConstraint(condition=Q(quorum__gte=1) & Q(quorum__lte=9), name="approval_quorum_range"),
            models.CheckConstraint(
                condition=(Q(state="pending") & Q(closed_at__isnull=True))
                | (~Q(state="pending") & Q(closed_at__isnull=False)),
                name="approval_closed_iff_not_pending",
            ),
            models.CheckConstraint(
                condition=~Q(state__in=["auto_approved", "overridden"]) | Q(mode="override_window"),
                name="approval_window_states_need_window",
            ),
            models.CheckConstraint(
                condition=Q(confidence__isnull=True) | (Q(confidence__gte=0) & Q(confidence__lte=1)),
                name="approval_confidence_range",
            ),
            models.CheckConstraint(
                condition=Q(requested_by__isnull=True) | Q(requested_by_service__isnull=True),
                name="approval_one_requester",
            ),
            models.UniqueConstraint(fields=["requested_by_service", "idempotency_key"],
                                    condition=~Q(idempotency_key="") & Q(requested_by_service__isnull=False),
                                    name="approval_unique_service_key"),
            models.UniqueConstraint(fields=["requested_by", "idempotency_key"],
                                    condition=~Q(idempotency_key="") & Q(requested_by__isnull=False),
                                    name="approval_unique_person_key"),
            models.UniqueConstraint(fields=["requester_label", "idempotency_key"],
                                    condition=~Q(idempotency_key="") & Q(requested_by__isnull=True)
                                    & Q(requested_by_service__isnull=True),
                                    name="approval_unique_system_key"),
        ]

    def __str__(self) -> str:
        return f"#{self.pk} {self.kind} {self.action} ({self.state})"

    def get_absolute_url(self) -> str:
        return reverse("approvals:detail", args=[self.pk])

    @property
    def is_pending(self) -> bool:
        return self.state == self.State.PENDING

    @property
    def is_escalated(self) -> bool:
        return self.level > 0

    @property
    def is_override_window(self) -> bool:
        return self.mode == self.Mode.OVERRIDE_WINDOW

    @property
    def at_deadline(self) -> str:
        """What happens when the current level runs out: "escalates to level 2", "expires", "proceeds".

        Reads `levels_total` and `terminal` when a selector annotated them, else the policy."""
        total = getattr(self, "levels_total", None)
        if total is None:
            total = self.policy.levels.count()
        if self.level + 1 < total:
            return f"escalates to level {self.level + 2}"
        terminal = getattr(self, "terminal", None) or self.policy.terminal_action
        return "proceeds" if terminal == EscalationPolicy.TerminalAction.PROCEED else "expires"

    def can_become(self, new_state: str) -> bool:
        return new_state in self.TRANSITIONS[self.state]

    def allowed_verdicts(self) -> tuple[str, ...]:
        return self.VERDICTS[self.Mode(self.mode)]

    def state_after(self, verdict: str, approvals: int, missing_roles: tuple[str, ...] = ()) -> str:
        """The state a verdict leads to, given the number of distinct approvals recorded so far and
        the approver roles none of them holds yet."""
        if verdict == "reject":
            return self.State.REJECTED
        if verdict == "override":
            return self.State.OVERRIDDEN
        return self.State.APPROVED if approvals >= self.quorum and not missing_roles else self.State.PENDING

    @property
    def is_held(self) -> bool:
        return self.held_at is not None

    def hold_summary(self) -> str:
        """Who stopped the workflow, when and why: "Paused by Olivia at 10:02: incident 42"."""
        workflow = self.workflow
        by = workflow.paused_by.get_username() if workflow.paused_by_id else "its agent or a system"
        at = timezone.localtime(workflow.paused_at).strftime("%H:%M") if workflow.paused_at else "?"
        return f"{workflow.slug} was paused by {by} at {at}: {workflow.paused_reason}"

    def quorum_summary(self) -> str:
        """"2 approvals" or "2 approvals incl. a senior_approver"."""
        text = f"{self.quorum} approval{'s' if self.quorum != 1 else ''}"
        if self.approver_roles:
            text += " incl. " + " and ".join(f"a {role}" for role in self.approver_roles)
        return text

    def outcome_summary(self) -> str:
        """How the request ended, e.g. "Approved by Alice at 10:02."."""
        if self.is_pending:
            return "Pending."
        at = timezone.localtime(self.closed_at).strftime("%H:%M")
        if self.state == State.AUTO_APPROVED:
            return f"Auto-approved at {at}: the override window ran out."
        if self.state == State.EXPIRED:
            return f"Expired at {at}: nobody decided before the last escalation level ran out."
        by = f" by {self.closed_by_label}" if self.closed_by_label else ""
        return f"{self.get_state_display().capitalize()}{by} at {at}."

    def closed_summary(self) -> str:
        """What a person who arrives late is told, e.g. "Already approved by Alice at 10:02."."""
        if self.is_pending:
            return "This request is still pending."
        summary = self.outcome_summary()
        return f"Already {summary[0].lower()}{summary[1:]}"

    def evidence_metrics(self) -> list[dict]:
        metrics = self.evidence.get("metrics") if isinstance(self.evidence, dict) else None
        return [m for m in metrics if isinstance(m, dict)] if isinstance(metrics, list) else []

    def evidence_lines(self) -> list[str]:
        """The metrics that crossed a threshold, one short line each: `latency_p95_ms 812 > 600 (10m)`."""
        lines = []
        for m in self.evidence_metrics():
            line = f"{m.get('metric', '?')} {m.get('value', '?')}"
            if "threshold" in m:
                line += f" {m.get('operator', 'vs')} {m['threshold']}"
            if m.get("window"):
                line += f" ({m['window']})"
            lines.append(line)
        return lines

    def evidence_links(self) -> list[dict]:
        """Links with an http(s) address only, so evidence can never smuggle a javascript: URL."""
        links = self.evidence.get("links") if isinstance(self.evidence, dict) else None
        if not isinstance(links, list):
            return []
        return [
            {"label": str(link.get("label") or link["url"]), "url": link["url"]}
            for link in links
            if isinstance(link, dict) and isinstance(link.get("url"), str)
            and link["url"].lower().startswith(("https://", "http://"))
        ]

    def evidence_extra(self) -> dict:
        if not isinstance(self.evidence, dict):
            return {}
        return {k: v for k, v in self.evidence.items() if k not in ("summary", "metrics", "links")}

    @property
    def confidence_percent(self) -> str:
        if self.confidence is None:
            return ""
        return f"{(self.confidence * 100).quantize(Decimal(1))} %"


class Decision(models.Model):
    """One person's verdict on one request; at most one per person (unique), kept forever."""

    class Verdict(models.TextChoices):
        APPROVE = "approve"
        REJECT = "reject"
        OVERRIDE = "override"

    class Reason(models.TextChoices):
        EXPECTED_BEHAVIOUR = "expected_behaviour", "expected behaviour"
        NOISE = "noise", "noise (false alarm)"
        KNOWN_CHANGE = "known_change", "known change"
        OTHER = "other"

    request = models.ForeignKey(ApprovalRequest, on_delete=models.PROTECT, related_name="decisions")
    decided_by = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT,
                                   related_name="approval_decisions")
    verdict = models.CharField(max_length=10, choices=Verdict.choices)
    justification = models.TextField(blank=True)
    reason = models.CharField(max_length=20, choices=Reason.choices, blank=True)
    level = models.PositiveSmallIntegerField(default=0)
    decided_at = models.DateTimeField()

    class Meta:
        ordering = ["decided_at", "pk"]
        constraints = [
            models.UniqueConstraint(fields=["request", "decided_by"], name="decision_one_per_person"),
            models.CheckConstraint(condition=Q(verdict__in=["approve", "reject", "override"]),
                                   name="decision_verdict_valid"),
            models.CheckConstraint(
                condition=Q(reason="") | Q(reason__in=["expected_behaviour", "noise", "known_change", "other"]),
                name="decision_reason_valid",
            ),
            models.CheckConstraint(condition=~Q(verdict="override") | ~Q(reason=""),
                                   name="decision_override_has_reason"),
            models.CheckConstraint(condition=Q(verdict="approve") | ~Q(justification=""),
                                   name="decision_refusal_has_justification"),
        ]

    def __str__(self) -> str:
        return f"{self.decided_by} {self.verdict} #{self.request_id}"


class Notice(models.Model):
    """One notification-worthy change, in the one outbox of approvals and rollouts.

    An approval notice names its request and is rendered when it is delivered (to whoever the
    request then waits for); it is unique per (request, event, level). Any other notice (a rollout's)
    carries its subject, workflow, recipients and text, written by whoever opened it, and is unique
    per (subject, event). Either way a change observed twice is told once."""

    class Source(models.TextChoices):
        APPROVAL = "approval"
        ROLLOUT = "rollout"

    class Event(models.TextChoices):
        REQUESTED = "requested"
        WINDOW_OPENED = "window_opened", "override window opened"
        ESCALATED = "escalated"
        REMINDER = "reminder"
        DECIDED = "decided"
        AUTONOMOUS_ACTION = "autonomous_action", "action taken without a person"
        SIGNALS_LOST = "signals_lost", "signals lost"
        ROLLBACK_EXECUTED = "rollback_executed", "rollback executed"
        ROLLBACK_FAILED = "rollback_failed", "rollback failed"

    source = models.CharField(max_length=20, choices=Source.choices, default=Source.APPROVAL)
    request = models.ForeignKey(ApprovalRequest, null=True, blank=True, on_delete=models.CASCADE,
                                related_name="notices")
    workflow = models.ForeignKey(Workflow, on_delete=models.CASCADE, related_name="notices")
    # What the notice is about, named as the audit log names subjects ("rollouts.signalloss", "7").
    subject_type = models.CharField(max_length=64)
    subject_id = models.CharField(max_length=64)
    event = models.CharField(max_length=20, choices=Event.choices)
    level = models.PositiveSmallIntegerField(default=0)
    # Written by the opener of a notice that is not an approval's; blank on approval notices.
    title = models.CharField(max_length=300, blank=True)
    body = models.TextField(blank=True)
    link = models.CharField(max_length=500, blank=True)
    recipients = models.JSONField(default=list, blank=True)  # email addresses
    data = models.JSONField(default=dict, blank=True)  # the webhook's machine-readable event payload
    created_at = models.DateTimeField()
    attempted_at = models.DateTimeField(null=True, blank=True)
    # Done with: every delivery sent, or out of attempts (its Delivery rows say which).
    delivered_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["created_at", "pk"]
        indexes = [models.Index(fields=["created_at"], condition=Q(delivered_at__isnull=True),
                                name="notice_undelivered_idx")]
        constraints = [
            models.UniqueConstraint(fields=["request", "event", "level"], name="notice_once_per_change"),
            models.UniqueConstraint(fields=["subject_type", "subject_id", "event"], condition=Q(request__isnull=True),
                                    name="notice_once_per_subject"),
            models.CheckConstraint(
                condition=Q(event__in=["requested", "window_opened", "escalated", "reminder", "decided",
                                       "autonomous_action", "signals_lost", "rollback_executed",
                                       "rollback_failed"]),
                name="notice_event_valid",
            ),
            models.CheckConstraint(condition=Q(source__in=["approval", "rollout"]), name="notice_source_valid"),
            models.CheckConstraint(
                condition=Q(source="approval", request__isnull=False)
                | (Q(request__isnull=True) & ~Q(source="approval") & ~Q(title="")),
                name="notice_request_or_text",
            ),
            models.CheckConstraint(condition=~Q(subject_type="") & ~Q(subject_id=""), name="notice_subject_named"),
        ]

    def __str__(self) -> str:
        if self.request_id is not None:
            return f"{self.event} #{self.request_id} level {self.level}"
        return f"{self.source} {self.event} {self.subject_type} {self.subject_id}"


class Delivery(models.Model):
    """One channel's attempt to deliver a notice to one recipient: an address, the webhook's URL, a Slack
    channel, or the name of the environment variable holding a PagerDuty routing key."""

    class Channel(models.TextChoices):
        EMAIL = "email"
        WEBHOOK = "webhook"
        SLACK = "slack"
        PAGERDUTY = "pagerduty", "PagerDuty"

    class Status(models.TextChoices):
        PENDING = "pending"
        SENDING = "sending"
        SENT = "sent"
        FAILED = "failed"
        SKIPPED = "skipped"

    notice = models.ForeignKey(Notice, on_delete=models.CASCADE, related_name="deliveries")
    channel = models.CharField(max_length=10, choices=Channel.choices)
    recipient = models.CharField(max_length=500)
    status = models.CharField(max_length=10, choices=Status.choices, default=Status.PENDING)
    attempts = models.PositiveSmallIntegerField(default=0)
    claimed_at = models.DateTimeField(null=True, blank=True)
    sent_at = models.DateTimeField(null=True, blank=True)
    last_error = models.TextField(blank=True)

    class Meta:
        verbose_name_plural = "deliveries"
        ordering = ["notice", "channel", "recipient"]
        constraints = [
            models.UniqueConstraint(fields=["notice", "channel", "recipient"], name="delivery_once_per_recipient"),
            models.CheckConstraint(condition=Q(channel__in=["email", "webhook", "slack", "pagerduty"]),
                                  name="delivery_channel_valid"),
            models.CheckConstraint(condition=Q(status__in=["pending", "sending", "sent", "failed", "skipped"]),
                                   name="delivery_status_valid"),
        ]

    def __str__(self) -> str:
        return f"{self.channel} → {self.recipient}: {self.status}"


class RuleOutcome(models.TextChoices):
    ALLOW = "allow"
    DENY = "deny"
    APPROVE = "approve"
    TIER = "tier", "use the tier"


class ActionRule(models.Model):
    """One rule of a governed action: when `condition` (CEL over the call, see approvals.rules)
    holds, `outcome` decides. Live rules are tried in `position` order and the first that holds
    decides; shadow rules run beside them, change nothing and only report where they differ."""

    Outcome = RuleOutcome

    action = models.ForeignKey(GovernedAction, on_delete=models.CASCADE, related_name="rules")
    shadow = models.BooleanField(default=False)
    position = models.PositiveSmallIntegerField()
    condition = models.TextField()
    outcome = models.CharField(max_length=10, choices=RuleOutcome.choices)
    # Shown to the agent when the rule denies; a note for people otherwise.
    reason = models.CharField(max_length=500, blank=True)
    # approve: how many distinct people, which roles must be among them, which escalation policy
    # (none: the workflow's gate policy in force).
    quorum = models.PositiveSmallIntegerField(null=True, blank=True)
    approver_roles = models.JSONField(default=list, blank=True)
    policy = models.ForeignKey(EscalationPolicy, null=True, blank=True, on_delete=models.PROTECT, related_name="+")
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["action", "shadow", "position"]
        constraints = [
            models.UniqueConstraint(fields=["action", "shadow", "position"], name="action_rule_unique_position"),
            models.CheckConstraint(condition=Q(outcome__in=RuleOutcome.values), name="action_rule_outcome_valid"),
            models.CheckConstraint(condition=~Q(outcome="deny") | ~Q(reason=""), name="action_rule_deny_has_reason"),
            models.CheckConstraint(
                condition=(Q(outcome="approve") & Q(quorum__gte=1) & Q(quorum__lte=9))
                | (~Q(outcome="approve") & Q(quorum__isnull=True) & Q(policy__isnull=True)),
                name="action_rule_quorum_iff_approve",
            ),
        ]

    def __str__(self) -> str:
        return f"{'shadow ' if self.shadow else ''}rule {self.position + 1}: {self.condition} → {self.outcome}"

    @property
    def number(self) -> int:
        return self.position + 1

    def summary(self) -> str:
        """The rule as one line: `params.amount <= 50 → allow`, `… → approve by 2 incl. senior_approver`."""
        outcome = "use the tier" if self.outcome == RuleOutcome.TIER else self.outcome
        if self.outcome == RuleOutcome.APPROVE:
            outcome = f"approve by {self.quorum}"
            if self.approver_roles:
                outcome += f" incl. {' and '.join(self.approver_roles)}"
            if self.policy_id:
                outcome += f" ({self.policy})"
        elif self.outcome == RuleOutcome.DENY:
            outcome = f"deny: {self.reason}"
        return f"{self.condition} → {outcome}"

    def as_data(self) -> dict:
        """What the audit trail and the answer keep of the rule."""
        data = {"id": self.pk, "position": self.position, "shadow": self.shadow, "condition": self.condition,
                "outcome": self.outcome, "reason": self.reason}
        if self.outcome == RuleOutcome.APPROVE:
            data.update(quorum=self.quorum, approver_roles=list(self.approver_roles), policy=self.policy_id)
        return data


class ShadowDifference(models.Model):
    """A dispatch where the shadow rules would have answered otherwise than the live ones."""

    action = models.ForeignKey(GovernedAction, on_delete=models.CASCADE, related_name="shadow_differences")
    created_at = models.DateTimeField()
    agent = models.CharField(max_length=150)
    parameters = models.JSONField(default=dict)
    live = models.JSONField()  # {"decision", "rule": rule number or null, "quorum"}
    shadow = models.JSONField()

    class Meta:
        ordering = ["-created_at", "-pk"]
        indexes = [models.Index(fields=["action", "-created_at"], name="shadow_difference_recent_idx")]

    def __str__(self) -> str:
        return f"{self.action}: live {self.live.get('decision')} / shadow {self.shadow.get('decision')}"


class ExecutionState(models.TextChoices):
    GRANTED = "granted"
    SUCCEEDED = "succeeded"
    FAILED = "failed"


class Execution(models.Model):
    """One execution of exactly one call (workflow, action, parameter digest), granted by an
    `allow` or claimed once on an approved request; the agent reports its outcome once."""

    State = ExecutionState

    workflow = models.ForeignKey(Workflow, on_delete=models.PROTECT, related_name="executions")
    action = models.CharField(max_length=100)
    parameters_digest = models.CharField(max_length=64)
    # The approval it was claimed on; none when dispatch allowed the call directly. Unique: one
    # approval, one execution, whatever the race.
    request = models.OneToOneField(ApprovalRequest, null=True, blank=True, on_delete=models.PROTECT,
                                   related_name="execution")
    service_account = models.ForeignKey(ServiceAccount, on_delete=models.PROTECT, related_name="executions")
    state = models.CharField(max_length=10, choices=ExecutionState.choices, default=ExecutionState.GRANTED)
    granted_at = models.DateTimeField()
    # The outcome is expected by then; a later report is still taken (the action may have run).
    expires_at = models.DateTimeField()
    reported_at = models.DateTimeField(null=True, blank=True)
    detail = models.TextField(blank=True)

    class Meta:
        ordering = ["-granted_at", "-pk"]
        indexes = [models.Index(fields=["workflow", "granted_at"], name="execution_workflow_idx")]
        constraints = [
            models.CheckConstraint(condition=Q(state__in=ExecutionState.values), name="execution_state_valid"),
            models.CheckConstraint(
                condition=(Q(state="granted") & Q(reported_at__isnull=True))
                | (~Q(state="granted") & Q(reported_at__isnull=False)),
                name="execution_reported_iff_outcome",
            ),
        ]

    def __str__(self) -> str:
        return f"execution {self.pk} of {self.action} ({self.state})"

    @property
    def is_granted(self) -> bool:
        return self.state == ExecutionState.GRANTED


class ApprovalCallback(models.Model):
    """Where to POST a request's outcome when it closes, and how delivering it went."""

    class State(models.TextChoices):
        PENDING = "pending", "pending"
        DELIVERED = "delivered", "delivered"
        FAILED = "failed", "failed"

    request = models.OneToOneField("approvals.ApprovalRequest", on_delete=models.CASCADE, related_name="callback")
    MAX_URL = 2000

    url = models.CharField(max_length=MAX_URL)
    # Whose digest signs it; a deleted token leaves nothing to sign with, and delivery gives up.
    token = models.ForeignKey("governance.ApiToken", null=True, on_delete=models.SET_NULL, related_name="+")
    state = models.CharField(max_length=10, choices=State.choices, default=State.PENDING)
    attempts = models.PositiveSmallIntegerField(default=0)
    # No attempt before this: the backoff after a failure, or the lease of an attempt under way.
    next_attempt_at = models.DateTimeField(null=True, blank=True)
    last_status = models.PositiveSmallIntegerField(null=True, blank=True)
    last_error = models.TextField(blank=True)
    created_at = models.DateTimeField()
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        indexes = [models.Index(fields=["state", "next_attempt_at"], name="callback_due_idx")]
        constraints = [
            models.CheckConstraint(condition=Q(state__in=["pending", "delivered", "failed"]),
                                   name="callback_state_valid"),
            models.CheckConstraint(condition=Q(state="pending") | Q(finished_at__isnull=False),
                                   name="callback_finished_iff_done"),
        ]

    def __str__(self) -> str:
        return f"callback of request {self.request_id} ({self.state})"


class NotificationRoute(models.Model):
    """Where one workflow's notices go, for some of its events (none listed: every event).

    A workflow with routes is told only through them; one without keeps the installation's
    APPROVALS_EMAIL and APPROVALS_WEBHOOK_URL. The PagerDuty routing key is a credential and never
    stored: the route names the environment variable that holds it. Written by approvals.routing
    (ringfence.yaml `notify:`)."""

    EVENTS = (*Notice.Event.values, "last_level")

    workflow = models.ForeignKey(Workflow, on_delete=models.CASCADE, related_name="notification_routes")
    position = models.PositiveSmallIntegerField(default=0)
    events = models.JSONField(default=list, blank=True)
    emails = models.JSONField(default=list, blank=True)
    slack_channel = models.CharField(max_length=100, blank=True)
    webhook_url = models.URLField(max_length=2000, blank=True)
    pagerduty_routing_key_env = models.CharField(
        max_length=100, blank=True, validators=[RegexValidator(r"^[A-Z_][A-Z0-9_]*$", "Name an environment variable, "
                                                               "e.g. PD_PAYMENTS.")])

    class Meta:
        ordering = ["workflow", "position"]
        constraints = [
            models.UniqueConstraint(fields=["workflow", "position"], name="notification_route_unique_position"),
            models.CheckConstraint(
                condition=~Q(emails=[]) | ~Q(slack_channel="") | ~Q(webhook_url="") | ~Q(pagerduty_routing_key_env=""),
                name="notification_route_goes_somewhere"),
        ]

    def __str__(self) -> str:
        return f"{self.workflow.slug} route {self.position + 1}: {', '.join(self.events) or 'every event'}"

    @property
    def webhook_host(self) -> str:
        """Where the webhook goes, without the path (which may carry a token) for the pages."""
        return urlsplit(self.webhook_url).netloc

    def matches(self, names: set[str]) -> bool:
        """Whether a notice known by `names` (its event, and `last_level` at a policy's last level) goes here."""
        return not self.events or bool(names & set(self.events))

    def as_data(self) -> dict:
        """The route as ringfence.yaml and the audit trail write it."""
        data: dict = {}
        if self.events:
            data["events"] = list(self.events)
        if self.emails:
            data["email"] = list(self.emails)
        if self.slack_channel:
            data["slack"] = self.slack_channel
        if self.webhook_url:
            data["webhook"] = self.webhook_url
        if self.pagerduty_routing_key_env:
            data["pagerduty"] = {"routing_key_env": self.pagerduty_routing_key_env}
        return data


class SlackMessage(models.Model):
    """The Slack message that tells a request in one channel (as its route names it), updated in
    place by every later notice of the request (approvals.slack)."""

    request = models.ForeignKey(ApprovalRequest, on_delete=models.CASCADE, related_name="slack_messages")
    channel = models.CharField(max_length=100)  # as the route names it: "#refunds" or "C0123ABCD"
    channel_id = models.CharField(max_length=32, blank=True)  # as Slack answered; chat.update needs it
    ts = models.CharField(max_length=32, blank=True)  # blank while the first post is under way
    posted_at = models.DateTimeField()
    updated_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["request", "channel"]
        constraints = [
            models.UniqueConstraint(fields=["request", "channel"], name="slack_message_once_per_channel"),
        ]

    def __str__(self) -> str:
        return f"#{self.request_id} in {self.channel} ({self.ts or 'not posted'})"


class SlackLink(models.Model):
    """A Slack user who acts in Ringfence as `user`, linked by an administrator (approvals.slack)."""

    team_id = models.CharField(max_length=32, blank=True)  # blank: the user id in any workspace
    slack_user_id = models.CharField(max_length=32)
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="slack_links")
    linked_at = models.DateTimeField()

    class Meta:
        ordering = ["slack_user_id"]
        constraints = [
            models.UniqueConstraint(fields=["team_id", "slack_user_id"], name="slack_link_one_per_slack_user"),
        ]

    def __str__(self) -> str:
        return f"{self.slack_user_id} → {self.user}"


class SlackDecision(models.Model):
    """Where a decision was taken in Slack, and by which Slack user (decisions on the web have none)."""

    decision = models.OneToOneField(Decision, on_delete=models.PROTECT, related_name="slack")
    team_id = models.CharField(max_length=32, blank=True)
    slack_user_id = models.CharField(max_length=32)

    def __str__(self) -> str:
        return f"decision {self.decision_id} by {self.slack_user_id} in Slack"
