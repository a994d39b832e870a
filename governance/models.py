from __future__ import annotations

import hashlib
import zoneinfo
from datetime import date, datetime, time

from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.validators import MaxValueValidator, MinValueValidator, RegexValidator
from django.db import models
from django.db.models import Q
from django.urls import reverse
from guardian.models import GroupObjectPermissionBase, UserObjectPermissionBase

from core import clock

slug_validator = RegexValidator(r"^[a-z0-9][a-z0-9_-]{0,62}$", "Use lowercase letters, digits, '-' and '_'.")


def validate_timezone(value: str) -> None:
    try:
        zoneinfo.ZoneInfo(value)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        raise ValidationError(f"{value!r} is not a known time zone (e.g. Europe/Berlin).") from None


def validate_weekdays(value: object) -> None:
    if not isinstance(value, list) or not value or any(not isinstance(d, int) or not 0 <= d <= 6 for d in value):
        raise ValidationError("Business days are a non-empty list of weekday numbers, Monday = 0 to Sunday = 6.")
    if len(set(value)) != len(value):
        raise ValidationError("Business days list a weekday twice.")


def validate_holidays(value: object) -> None:
    if not isinstance(value, list) or any(not isinstance(d, str) for d in value):
        raise ValidationError("Holidays are a list of dates, e.g. 2026-12-25.")
    for day in value:
        try:
            date.fromisoformat(day)
        except ValueError:
            raise ValidationError(f"{day!r} is not a date; write it as 2026-12-25.") from None
    if len(set(value)) != len(value):
        raise ValidationError("Holidays list a date twice.")


def default_weekdays() -> list[int]:
    return [0, 1, 2, 3, 4]


class Workflow(models.Model):
    """One AI workflow or agent capability under governance."""

    class Environment(models.TextChoices):
        STAGING = "staging"
        PRODUCTION = "production"

    class Tier(models.IntegerChoices):
        AUTONOMOUS = 1, "1 · autonomous"
        SUPERVISED = 2, "2 · supervised"
        GATED = 3, "3 · gated"

    slug = models.CharField(max_length=63, unique=True, validators=[slug_validator])
    name = models.CharField(max_length=200)
    description = models.TextField(blank=True)
    environment = models.CharField(max_length=20, choices=Environment.choices, default=Environment.STAGING)
    owning_team = models.CharField(max_length=100, blank=True)
    autonomy_tier = models.PositiveSmallIntegerField(choices=Tier.choices, default=Tier.GATED)
    off_hours_tier = models.PositiveSmallIntegerField(choices=Tier.choices, null=True, blank=True)
    timezone = models.CharField(max_length=64, default="UTC", validators=[validate_timezone])
    business_days = models.JSONField(default=default_weekdays, validators=[validate_weekdays])
    business_start = models.TimeField(default=time(9, 0))
    business_end = models.TimeField(default=time(17, 0))
    # Dates (in the workflow's time zone) that are off hours all day, e.g. ["2026-12-25"].
    holidays = models.JSONField(default=list, blank=True, validators=[validate_holidays])
    paused = models.BooleanField(default=False)
    paused_reason = models.TextField(blank=True)
    paused_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.PROTECT, related_name="+"
    )
    paused_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["slug"]
        permissions = [
            ("approve_workflow", "Decide approval requests of this workflow"),
            ("contain_workflow", "Take containment actions on this workflow"),
            ("manage_rollouts", "Write and start rollout plans of this workflow"),
        ]
        constraints = [
            models.CheckConstraint(condition=Q(environment__in=["staging", "production"]),
                                   name="workflow_environment_valid"),
            models.CheckConstraint(condition=Q(autonomy_tier__in=[1, 2, 3]), name="workflow_tier_valid"),
            models.CheckConstraint(
                condition=Q(off_hours_tier__isnull=True) | Q(off_hours_tier__in=[1, 2, 3]),
                name="workflow_off_hours_tier_valid",
            ),
            models.CheckConstraint(condition=Q(business_start__lt=models.F("business_end")),
                                   name="workflow_hours_ordered"),
            models.CheckConstraint(condition=Q(paused=False) | ~Q(paused_reason=""), name="workflow_pause_has_reason"),
        ]

    def __str__(self) -> str:
        return self.slug

    @property
    def audit_workflow(self) -> str:
        """The workflow the audit log files this workflow's events under (audit.log.workflow_of)."""
        return self.slug

    def get_absolute_url(self) -> str:
        return reverse("governance:workflow_detail", args=[self.slug])

    def clean(self) -> None:
        if self.holidays is None:  # a form left empty: no holidays
            self.holidays = []
        if self.business_start and self.business_end and self.business_start >= self.business_end:
            raise ValidationError({"business_end": "Business hours must end after they start."})

    def in_business_hours(self, at: datetime) -> bool:
        local = at.astimezone(zoneinfo.ZoneInfo(self.timezone))
        return (local.weekday() in self.business_days and self.business_start <= local.time() < self.business_end
                and local.date().isoformat() not in (self.holidays or ()))

    def tier_at(self, at: datetime) -> int:
        """The autonomy tier in force at `at`: the off-hours tier outside business hours, if set."""
        if self.off_hours_tier is not None and not self.in_business_hours(at):
            return self.off_hours_tier
        return self.autonomy_tier


class GovernedAction(models.Model):
    """An action an agent of this workflow must ask about before dispatching it."""

    class Risk(models.TextChoices):
        LOW = "low"
        MEDIUM = "medium"
        HIGH = "high"
        CRITICAL = "critical"

    workflow = models.ForeignKey(Workflow, on_delete=models.CASCADE, related_name="actions")
    name = models.CharField(max_length=63, validators=[slug_validator])
    description = models.CharField(max_length=300, blank=True)
    risk = models.CharField(max_length=10, choices=Risk.choices, default=Risk.HIGH)
    quorum = models.PositiveSmallIntegerField(default=1, validators=[MinValueValidator(1), MaxValueValidator(9)])

    class Meta:
        ordering = ["workflow", "name"]
        constraints = [
            models.UniqueConstraint(fields=["workflow", "name"], name="governed_action_unique_name"),
            models.CheckConstraint(condition=Q(quorum__gte=1) & Q(quorum__lte=9), name="governed_action_quorum_range"),
            models.CheckConstraint(condition=Q(risk__in=["low", "medium", "high", "critical"]),
                                   name="governed_action_risk_valid"),
        ]

    def __str__(self) -> str:
        return f"{self.workflow.slug}:{self.name}"


class ContainmentAssignment(models.Model):
    """Who owns which containment duty of a workflow; one primary per duty."""

    class Duty(models.TextChoices):
        PAUSE = "pause"
        NARROW = "narrow"
        FALLBACK = "fallback"
        ROLLBACK = "rollback"
        ESCALATE = "escalate"
        APPROVE_EXPANSION = "approve_expansion", "approve expansion"

    class Position(models.TextChoices):
        PRIMARY = "primary"
        BACKUP = "backup"

    workflow = models.ForeignKey(Workflow, on_delete=models.CASCADE, related_name="containment")
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="containment_duties")
    duty = models.CharField(max_length=20, choices=Duty.choices)
    position = models.CharField(max_length=10, choices=Position.choices, default=Position.PRIMARY)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["workflow", "duty", "position", "user__username"]
        constraints = [
            models.UniqueConstraint(fields=["workflow", "duty", "user"], name="containment_one_position_per_user"),
            models.UniqueConstraint(
                fields=["workflow", "duty"], condition=Q(position="primary"), name="containment_one_primary_per_duty"
            ),
            models.CheckConstraint(
                condition=Q(duty__in=["pause", "narrow", "fallback", "rollback", "escalate", "approve_expansion"]),
                name="containment_duty_valid",
            ),
            models.CheckConstraint(condition=Q(position__in=["primary", "backup"]), name="containment_position_valid"),
        ]

    def __str__(self) -> str:
        return f"{self.workflow.slug} {self.duty} {self.position}: {self.user}"


class WorkflowUserObjectPermission(UserObjectPermissionBase):
    content_object = models.ForeignKey(Workflow, on_delete=models.CASCADE)

    class Meta(UserObjectPermissionBase.Meta):
        abstract = False


class WorkflowGroupObjectPermission(GroupObjectPermissionBase):
    content_object = models.ForeignKey(Workflow, on_delete=models.CASCADE)

    class Meta(GroupObjectPermissionBase.Meta):
        abstract = False


class ServiceAccount(models.Model):
    """An agent or CI job that calls the API. Its owner is a person, for four-eyes."""

    name = models.CharField(max_length=63, unique=True, validators=[slug_validator])
    description = models.CharField(max_length=300, blank=True)
    owner = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="service_accounts")
    workflows = models.ManyToManyField(Workflow, related_name="service_accounts", blank=True)
    active = models.BooleanField(default=True)
    # What the account may do beyond its workflows: "config" plans and applies configuration, "audit"
    # reads the audit log's checkpoints, entries and proofs.
    permissions = models.JSONField(default=list, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    PERMISSIONS = ("config", "audit")

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name

    def audit_actor(self) -> tuple[str, str, str]:
        """How the audit log names this account when it acts (audit.log.describe_actor)."""
        return "service", str(self.pk), self.name


TOKEN_PREFIX_LENGTH = 12


class ApiToken(models.Model):
    """A bearer token: only its prefix (for lookup) and SHA-256 digest are stored."""

    service_account = models.ForeignKey(ServiceAccount, on_delete=models.CASCADE, related_name="tokens")
    label = models.CharField(max_length=100, blank=True)
    prefix = models.CharField(max_length=TOKEN_PREFIX_LENGTH, db_index=True)
    digest = models.CharField(max_length=64, unique=True)
    created_at = models.DateTimeField(auto_now_add=True)
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.PROTECT,
                                   related_name="+")
    last_used_at = models.DateTimeField(null=True, blank=True)
    # Every token ends (API_TOKEN_MAX_DAYS after it was issued); a rotation brings the end of the old
    # one forward to the overlap's end.
    expires_at = models.DateTimeField()
    replaced_by = models.ForeignKey("self", null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    revoked_at = models.DateTimeField(null=True, blank=True)
    revoked_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.PROTECT,
                                   related_name="+")

    class Meta:
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return f"{self.service_account.name} {self.prefix}…"

    @staticmethod
    def digest_of(raw: str) -> str:
        return hashlib.sha256(raw.encode("utf-8")).hexdigest()

    @property
    def is_revoked(self) -> bool:
        return self.revoked_at is not None

    @property
    def is_expired(self) -> bool:
        return self.expires_at <= clock.now()

    def refusal_at(self, now: datetime) -> tuple[str, str] | None:
        """Why the token is refused at `now` (code, words for the caller), or None when usable."""
        if self.revoked_at is not None:
            return "token_revoked", f"This token was revoked on {self.revoked_at:%Y-%m-%d %H:%M} UTC."
        if self.expires_at <= now:
            return "token_expired", (f"This token expired on {self.expires_at:%Y-%m-%d %H:%M} UTC; ask an "
                                     "administrator for a new one (rotate it before it ends).")
        if not self.service_account.active:
            return "service_account_disabled", "This token's service account is disabled."
        return None


# --- sign-in through the company's identity provider (governance.oidc, README "Sign in with your identity
# provider") --------------------------------------------------------------------------------------


class IdentityLink(models.Model):
    """A person who signs in through the identity provider: the provider's subject for them, and what it
    last said of their email and groups. `email_verified` is the provider's word, kept beside the email."""

    user = models.OneToOneField(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="identity")
    issuer = models.CharField(max_length=255)
    subject = models.CharField(max_length=255)
    email = models.EmailField(blank=True)
    email_verified = models.BooleanField(default=False)
    groups = models.JSONField(default=list, blank=True)  # the groups claim at the last sign-in
    # The staff flag came with a mapping's administrator role (and goes with it).
    staff_granted = models.BooleanField(default=False)
    created_at = models.DateTimeField(auto_now_add=True)
    last_signed_in_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["user__username"]
        constraints = [models.UniqueConstraint(fields=["issuer", "subject"], name="identity_link_unique_subject")]

    def __str__(self) -> str:
        return f"{self.subject} at {self.issuer}"


class GroupMapping(models.Model):
    """ringfence.yaml's `identity.groups`: what one identity-provider group gives its members, the roles and
    the workflow scope (object permission codenames per workflow slug). Changed only by the file."""

    group = models.CharField(max_length=255, unique=True)
    roles = models.JSONField(default=list, blank=True)
    scope = models.JSONField(default=dict, blank=True)  # {"refund-agent": ["view_workflow", "approve_workflow"]}
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["group"]

    def __str__(self) -> str:
        return self.group


class IdentityGrant(models.Model):
    """A role, or one permission on one workflow, that a person holds because a group mapping gave it at
    sign-in. Only these are taken away when the group goes: what an administrator granted by hand has no
    such row and stays."""

    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="identity_grants")
    role = models.CharField(max_length=40, blank=True)
    workflow = models.ForeignKey(Workflow, null=True, blank=True, on_delete=models.CASCADE, related_name="+")
    permission = models.CharField(max_length=40, blank=True)
    groups = models.JSONField(default=list)  # the groups whose mappings give it, at the last sign-in
    granted_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["user", "role", "workflow", "permission"]
        constraints = [
            models.CheckConstraint(
                condition=(Q(workflow__isnull=True, permission="") & ~Q(role=""))
                | (Q(workflow__isnull=False, role="") & ~Q(permission="")),
                name="identity_grant_role_or_permission",
            ),
            models.UniqueConstraint(fields=["user", "role"], condition=Q(workflow__isnull=True),
                                    name="identity_grant_one_per_role"),
            models.UniqueConstraint(fields=["user", "workflow", "permission"], condition=Q(workflow__isnull=False),
                                    name="identity_grant_one_per_permission"),
        ]

    def __str__(self) -> str:
        return self.role or f"{self.permission} on {self.workflow_id}"


class BreakGlassLink(models.Model):
    """A one-time sign-in link for the emergency superuser (`manage.py breakglass`): only its SHA-256 digest
    is stored; it works once, before `expires_at`."""

    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="+")
    digest = models.CharField(max_length=64, unique=True)
    reason = models.TextField()
    issued_by = models.CharField(max_length=150)  # who ran the command (operating-system account)
    created_at = models.DateTimeField()
    expires_at = models.DateTimeField()
    used_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]
        constraints = [models.CheckConstraint(condition=Q(expires_at__gt=models.F("created_at")),
                                              name="break_glass_link_ends_after_it_starts")]

    def __str__(self) -> str:
        return f"break-glass link for {self.user_id}"

    @staticmethod
    def digest_of(raw: str) -> str:
        return hashlib.sha256(raw.encode("utf-8")).hexdigest()
