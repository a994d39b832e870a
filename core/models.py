"""Infrastructure rows: the API's idempotency keys."""

from __future__ import annotations

from django.conf import settings
from django.db import models
from django.db.models import Q


class IdempotencyKey(models.Model):
    """A caller's Idempotency-Key and the first answer given for it (IETF Idempotency-Key draft).

    Scoped per service account (or per person for session callers). `fingerprint` is a digest of
    the method, path and canonical JSON body: the same key with another body is refused. The row
    is inserted `in_flight` and completed with the answer in the transaction that makes the
    change, so a committed row always carries its answer. Rows are kept until `expires_at`
    (IDEMPOTENCY_KEY_TTL_HOURS).
    """

    class State(models.TextChoices):
        IN_FLIGHT = "in_flight", "in flight"
        COMPLETED = "completed"

    service_account = models.ForeignKey("governance.ServiceAccount", null=True, blank=True, on_delete=models.CASCADE,
                                        related_name="+")
    user = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.CASCADE,
                             related_name="+")
    key = models.CharField(max_length=255)
    fingerprint = models.CharField(max_length=64)
    method = models.CharField(max_length=10)
    path = models.CharField(max_length=255)
    state = models.CharField(max_length=10, choices=State.choices, default=State.IN_FLIGHT)
    response_status = models.PositiveSmallIntegerField(null=True, blank=True)
    response_content_type = models.CharField(max_length=100, blank=True)
    response_body = models.TextField(blank=True)
    created_at = models.DateTimeField()
    expires_at = models.DateTimeField(db_index=True)

    class Meta:
        db_table = "governance_idempotencykey"  # the table predates the core app
        constraints = [
            models.UniqueConstraint(fields=["service_account", "key"], condition=Q(service_account__isnull=False),
                                    name="idempotency_key_unique_per_service"),
            models.UniqueConstraint(fields=["user", "key"], condition=Q(user__isnull=False),
                                    name="idempotency_key_unique_per_user"),
            models.CheckConstraint(
                condition=(Q(service_account__isnull=False) & Q(user__isnull=True))
                | (Q(service_account__isnull=True) & Q(user__isnull=False)),
                name="idempotency_key_one_owner",
            ),
            models.CheckConstraint(condition=Q(state__in=["in_flight", "completed"]),
                                   name="idempotency_key_state_valid"),
            models.CheckConstraint(condition=Q(state="in_flight") | Q(response_status__isnull=False),
                                   name="idempotency_key_completed_has_response"),
        ]

    def __str__(self) -> str:
        return f"{self.key} ({self.state})"
