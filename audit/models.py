"""The audit log's rows: events and signed checkpoints. Written only by audit.log."""

from __future__ import annotations

from django.db import models


class AuditEvent(models.Model):
    """One link of the append-only, hash-chained audit trail. Written only by audit.log."""

    seq = models.BigIntegerField(primary_key=True)
    occurred_at = models.DateTimeField(db_index=True)
    actor_kind = models.CharField(max_length=10)
    actor_id = models.CharField(max_length=64, blank=True)
    actor_label = models.CharField(max_length=150)
    action = models.CharField(max_length=64, db_index=True)
    subject_type = models.CharField(max_length=64)
    subject_id = models.CharField(max_length=64)
    workflow_slug = models.CharField(max_length=63, blank=True, db_index=True)
    reason = models.TextField(blank=True)
    data = models.JSONField(default=dict)
    canonical = models.TextField()
    prev_hash = models.CharField(max_length=64, unique=True)
    hash = models.CharField(max_length=64, unique=True)

    class Meta:
        db_table = "governance_auditevent"  # the table predates the audit app
        ordering = ["seq"]
        indexes = [models.Index(fields=["subject_type", "subject_id"], name="audit_subject_idx")]

    def __str__(self) -> str:
        return f"#{self.seq} {self.action}"


class AuditCheckpoint(models.Model):
    """A signed statement of the chain head (seq, hash) at a time; also shipped to a file."""

    created_at = models.DateTimeField()
    head_seq = models.BigIntegerField()
    head_hash = models.CharField(max_length=64)
    signature = models.CharField(max_length=64)
    reason = models.CharField(max_length=20, default="interval")

    class Meta:
        db_table = "governance_auditcheckpoint"
        ordering = ["created_at", "id"]

    def __str__(self) -> str:
        return f"checkpoint @{self.head_seq}"
