"""The audit log's rows, all append-only (the database refuses UPDATE, DELETE and TRUNCATE):

- AuditEntry: accepted with the change that caused it, in the same transaction (audit.log.record);
- AuditEvent: an entry given its place (seq) by the sequencer, on the hash chain and a leaf of the
  RFC 9162 Merkle tree whose perfect subtrees are AuditTreeNode rows (audit.sequencing);
- AuditTreeHead: a signed checkpoint of the tree (C2SP tlog-checkpoint as an Ed25519 signed note);
- AuditCheckpoint: the HMAC-signed chain heads written before the tree existed (still verifiable).

Not part of the log: VerifyUpload (and its chunks), an export file an auditor handed to the verify
page, kept only until a worker has checked it.
"""

from __future__ import annotations

import uuid

from django.conf import settings
from django.db import models


class AuditEntry(models.Model):
    """An audit entry, durable from the commit of the change it records; waiting for its seq.

    `canonical` is the event's canonical JSON with `"seq":0`; the sequencer writes the real seq in.
    `mac` (HMAC-SHA256 under AUDIT_CHECKPOINT_KEY, a key the database never holds) lets the
    sequencer and the verifier tell an entry altered before it was sequenced. `xid` is the writing
    transaction's id (PostgreSQL's pg_current_xact_id(); 0 on SQLite): the sequencer takes entries
    of transactions that have all ended, in (xid, id) order, so none is skipped or taken twice.
    """

    xid = models.BigIntegerField()
    occurred_at = models.DateTimeField()
    action = models.CharField(max_length=64)
    canonical = models.TextField()
    mac = models.CharField(max_length=64)

    class Meta:
        db_table = "audit_entry"
        indexes = [models.Index(fields=["xid", "id"], name="audit_entry_order_idx")]

    def __str__(self) -> str:
        return f"entry {self.pk} {self.action}"


class AuditEvent(models.Model):
    """One event of the log: a link of the hash chain and leaf seq - 1 of the Merkle tree.
    Written only by audit.sequencing (and, before the sequencer existed, by the old audit writer)."""

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
    # The entry it was sequenced from, and when (none for events written before the sequencer existed).
    # No foreign-key constraint: both tables refuse DELETE already, and PostgreSQL's deferred FK check
    # would queue a trigger event on every insert of this append-only table.
    entry = models.OneToOneField(AuditEntry, null=True, blank=True, on_delete=models.DO_NOTHING, related_name="event",
                                 db_constraint=False)
    sequenced_at = models.DateTimeField(null=True, blank=True)

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


class AuditTreeNode(models.Model):
    """The hash of a perfect subtree of the Merkle tree: leaves [index·2^level, (index+1)·2^level).
    Level 0 holds the leaf hashes SHA-256(0x00 ‖ canonical bytes). Written when complete, never changed."""

    pk = models.CompositePrimaryKey("level", "index")
    level = models.PositiveSmallIntegerField()
    index = models.BigIntegerField()
    hash = models.BinaryField(max_length=32)

    class Meta:
        db_table = "audit_tree_node"

    def __str__(self) -> str:
        return f"node {self.level}/{self.index}"


class AuditTreeHead(models.Model):
    """A signed checkpoint: the tree's size and root as a C2SP tlog-checkpoint in an Ed25519 signed note."""

    created_at = models.DateTimeField()
    tree_size = models.BigIntegerField()
    root_hash = models.CharField(max_length=64)
    note = models.TextField()

    class Meta:
        db_table = "audit_tree_head"
        ordering = ["tree_size", "id"]
        indexes = [models.Index(fields=["tree_size"], name="audit_tree_head_size_idx")]

    def __str__(self) -> str:
        return f"tree head @{self.tree_size}"


class VerifyUpload(models.Model):
    """An export file uploaded to the auditors' verify page, waiting for a worker to check it.

    The bytes live in the database (VerifyUploadChunk, 1 MiB a row) rather than on the web server's
    disk: a worker on any machine reads them, they go when the row goes, and neither side holds
    the whole file in memory. The row is deleted once the file is checked (the verdict is kept
    with the job's progress, audit.jobs), and rows left by a lost job go after PROGRESS_TTL.
    """

    class Kind(models.TextChoices):
        CHAIN = "chain", "the whole chain"
        EXCERPT = "excerpt", "an excerpt"

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    owner = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="+")
    name = models.CharField(max_length=255)
    kind = models.CharField(max_length=10, choices=Kind)
    size = models.BigIntegerField(default=0)
    sha256 = models.CharField(max_length=64, blank=True)
    created_at = models.DateTimeField()

    class Meta:
        db_table = "audit_verify_upload"
        constraints = [
            models.CheckConstraint(condition=models.Q(kind__in=["chain", "excerpt"]), name="audit_verify_upload_kind"),
            models.CheckConstraint(condition=models.Q(size__gte=0), name="audit_verify_upload_size"),
        ]

    def __str__(self) -> str:
        return f"upload {self.name} ({self.size} bytes)"


class VerifyUploadChunk(models.Model):
    """One stretch of an uploaded file's bytes, in order by `index`."""

    upload = models.ForeignKey(VerifyUpload, on_delete=models.CASCADE, related_name="chunks")
    index = models.PositiveIntegerField()
    data = models.BinaryField()

    class Meta:
        db_table = "audit_verify_upload_chunk"
        constraints = [models.UniqueConstraint(fields=["upload", "index"], name="audit_verify_upload_chunk_once")]

    def __str__(self) -> str:
        return f"chunk {self.index} of {self.upload_id}"
