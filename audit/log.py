"""The audit trail's door: `record()` is the only way an audited change writes its record.

`record()` accepts one entry (AuditEntry) inside the caller's transaction, so a change and its
record commit together, with one INSERT: no lock, no read of the log. The sequencer
(audit.sequencing) then gives it its seq, its link in the hash chain and its leaf in the Merkle
tree. Also here: the HMAC chain checkpoints of the log's first years, and the database verifier.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import json
import math
import re
import sys
import uuid
from collections.abc import Callable, Iterator
from decimal import Decimal
from enum import Enum
from typing import Any

import psycopg
from django.conf import settings
from django.contrib.auth.models import AbstractBaseUser
from django.db import DatabaseError, connection, models, transaction

from audit import sequencing
from audit import verify_audit as tlog
from audit.models import AuditCheckpoint, AuditEntry, AuditEvent, AuditTreeHead
from audit.verify_audit import (
    FORMAT_VERSION,
    GENESIS,
    Checkpoint,
    Report,
    _inner_seq,
    _settle,
    _Walk,
    canonical_json,
    sign_checkpoint,
    verify,
)
from core import clock

# The inline writers' lock (audit.sequencing); the HMAC checkpoints read the head under it too.
AUDIT_LOCK_KEY = sequencing.AUDIT_LOCK_KEY
ACTION_PATTERN = re.compile(r"^[a-z][a-z_]*\.[a-z][a-z_.]*$")
MAX_REASON = 10_000
# Lengths of the AuditEvent columns that repeat parts of the hashed contents.
COLUMN_LIMITS = {"actor": 150, "subject type": 64, "subject id": 64, "workflow": 63}
MAX_INT_BITS = 10_000  # ~3,000 digits: below Python's int/str conversion limit, so exports stay readable
AUDIT_ACTIONS = ("audit.checkpoint_signed",)


class AuditError(Exception):
    pass


def format_time(value: dt.datetime) -> str:
    """UTC ISO-8601 with microseconds and Z, e.g. 2025-01-31T09:00:00.000000Z (four-digit years)."""
    if value.tzinfo is None or value.utcoffset() is None:
        raise AuditError("naive datetimes cannot be audited; use an aware UTC time")
    try:
        utc = value.astimezone(dt.UTC)
    except OverflowError:
        raise AuditError(f"{value!r} cannot be expressed in UTC") from None
    return utc.replace(tzinfo=None).isoformat(timespec="microseconds") + "Z"


def text(value: str, path: str) -> str:
    """A string the database and the verifier store byte for byte: valid UTF-8 and no NUL."""
    if "\x00" in value:
        raise AuditError(f"{path}: text must not contain NUL characters")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise AuditError(f"{path}: text must be valid Unicode (no lone surrogates)") from None
    return value


def normalize(value: Any, path: str = "data") -> Any:
    """Turn a value into the JSON subset that hashes the same after any round trip.

    Floats and Decimals become strings (exact, no binary rounding across systems), datetimes UTC
    ISO-8601 with Z; NaN and Infinity are refused so they can never reach the hashed bytes.
    """
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, str):
        return text(value, path)
    if isinstance(value, Enum):
        return normalize(value.value, path)
    if isinstance(value, int):
        if value.bit_length() > MAX_INT_BITS:
            raise AuditError(f"{path}: integer too large to audit as a number; pass it as a string")
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise AuditError(f"{path}: {value!r} is not a finite number")
        return repr(value)
    if isinstance(value, Decimal):
        if not value.is_finite():
            raise AuditError(f"{path}: {value!r} is not a finite number")
        return str(value)
    if isinstance(value, dt.datetime):
        return format_time(value)
    if isinstance(value, (dt.date, dt.time)):
        return value.isoformat()
    if isinstance(value, (uuid.UUID,)):
        return str(value)
    if isinstance(value, dict):
        out = {}
        for key, item in value.items():
            if not isinstance(key, str):
                raise AuditError(f"{path}: keys must be strings, not {type(key).__name__}")
            out[text(key, path)] = normalize(item, f"{path}.{key}")
        return out
    if isinstance(value, (list, tuple)):
        return [normalize(item, f"{path}[{i}]") for i, item in enumerate(value)]
    raise AuditError(f"{path}: {type(value).__name__} cannot be audited")


def describe_actor(actor: Any) -> tuple[str, str, str]:
    if actor is None:
        return "system", "", "system"
    if isinstance(actor, AbstractBaseUser):
        return "user", str(actor.pk), actor.get_username()
    if hasattr(actor, "audit_actor"):  # a service account names itself
        return actor.audit_actor()
    if isinstance(actor, str):
        return "system", "", actor
    raise AuditError(f"unknown actor type {type(actor).__name__}")


def describe_subject(subject: Any) -> tuple[str, str]:
    if isinstance(subject, models.Model):
        return subject._meta.label_lower, str(subject.pk)
    if isinstance(subject, tuple) and len(subject) == 2:
        return str(subject[0]), str(subject[1])
    raise AuditError("subject must be a saved model instance or a (type, id) pair")


def workflow_of(subject: Any) -> str:
    """The slug of the workflow a subject is (`audit_workflow`) or belongs to (its `workflow`)."""
    own = getattr(subject, "audit_workflow", None)
    if isinstance(own, str):
        return own
    return getattr(getattr(subject, "workflow", None), "audit_workflow", "") or ""


def current_trace_id() -> str:
    """The trace id (32 hex) of the span this code runs under, or "" (no tracing, no valid span, or a
    trace that is not sampled: its id would lead to nothing in the tracing UI). Costs nothing when
    tracing is off: OpenTelemetry is only read if the process already loaded it."""
    trace = sys.modules.get("opentelemetry.trace")
    if trace is None:
        return ""
    context = trace.get_current_span().get_span_context()
    return trace.format_trace_id(context.trace_id) if context.is_valid and context.trace_flags.sampled else ""


def record(actor: Any, action: str, subject: Any, data: dict | None = None, reason: str = "",
           *, workflow: Any = None) -> AuditEvent | AuditEntry:
    """Accept one entry inside the caller's transaction: it commits with the change. Returns the
    event when sequenced inline (AUDIT_SEQUENCER=inline), else the entry the sequencer will place."""
    if not connection.in_atomic_block:
        raise AuditError("audit.record() must run inside the transaction that makes the change")
    if not isinstance(action, str) or not ACTION_PATTERN.fullmatch(action) or len(action) > 64:
        raise AuditError(f"action {action!r} must look like 'app.event'")
    actor_kind, actor_id, actor_label = describe_actor(actor)
    subject_type, subject_id = describe_subject(subject)
    if subject_id in ("", "None"):
        raise AuditError("the subject must be saved before it is audited")
    workflow_slug = workflow if isinstance(workflow, str) and workflow else workflow_of(workflow or subject)
    for name, value in (("actor", actor_label), ("subject type", subject_type), ("subject id", subject_id),
                        ("workflow", workflow_slug)):
        limit = COLUMN_LIMITS[name]
        if len(text(value, name)) > limit:
            raise AuditError(f"{name} {value[:40]!r}… is longer than {limit} characters")
    reason = text((reason or "")[:MAX_REASON], "reason")
    payload_data = normalize(data or {})
    occurred_at = clock.now()
    columns = {
        "occurred_at": occurred_at, "actor_kind": actor_kind, "actor_id": actor_id, "actor_label": actor_label,
        "action": action, "subject_type": subject_type, "subject_id": subject_id, "workflow_slug": workflow_slug,
        "reason": reason, "data": payload_data,
    }
    # The entry is accepted with the change and needs nothing from the log: no lock, no read of
    # the head. The sequencer gives it its seq (audit.sequencing).
    if trace := current_trace_id():  # only under a span: entries without one keep their old bytes
        columns["trace"] = trace
    unsequenced = unsequenced_canonical(columns)
    mac = sequencing.entry_mac(unsequenced)
    entry_id = _insert_entry(occurred_at, action, unsequenced, mac)
    if settings.AUDIT_SEQUENCER == "inline":
        return sequencing.append_inline(entry_id, unsequenced, mac)
    return AuditEntry(pk=entry_id, occurred_at=occurred_at, action=action, canonical=unsequenced, mac=mac)


_INSERT_ENTRY_SQL = {
    "postgresql": "INSERT INTO audit_entry (xid, occurred_at, action, canonical, mac) "
                  "VALUES (pg_current_xact_id()::text::bigint, %s, %s, %s, %s) RETURNING id",
    "sqlite": "INSERT INTO audit_entry (xid, occurred_at, action, canonical, mac) VALUES (0, %s, %s, %s, %s) "
              "RETURNING id",
}


def _insert_entry(occurred_at: dt.datetime, action: str, unsequenced: str, mac: str) -> int:
    with connection.cursor() as cursor:
        cursor.execute(_INSERT_ENTRY_SQL[connection.vendor],
                       [connection.ops.adapt_datetimefield_value(occurred_at), action, unsequenced, mac])
        return cursor.fetchone()[0]


def unsequenced_canonical(columns: dict) -> str:
    """An entry's canonical JSON with `"seq":0`, as accepted; the sequencer writes its seq in
    (sequencing.with_seq)."""
    return canonical_json({
        **({"trace": columns["trace"]} if columns.get("trace") else {}),
        "v": FORMAT_VERSION,
        "seq": 0,
        "at": format_time(columns["occurred_at"]),
        "actor": {"kind": columns["actor_kind"], "id": columns["actor_id"], "label": columns["actor_label"]},
        "action": columns["action"],
        "subject": {"type": columns["subject_type"], "id": columns["subject_id"]},
        "workflow": columns["workflow_slug"],
        "data": columns["data"],
        "reason": columns["reason"],
    })


def event_payload(event: AuditEvent) -> dict:
    return json.loads(event.canonical)


def export_line(event: AuditEvent | tuple) -> str:
    if isinstance(event, AuditEvent):
        seq, prev_hash, event_hash, canonical = event.seq, event.prev_hash, event.hash, event.canonical
    else:
        seq, prev_hash, event_hash, canonical = event
    return ('{"type":"event","seq":%d,"prev_hash":"%s","hash":"%s","event":%s}'
            % (seq, prev_hash, event_hash, canonical))


def checkpoint_line(cp: AuditCheckpoint) -> str:
    return json.dumps({"type": "checkpoint", "seq": cp.head_seq, "hash": cp.head_hash,
                       "at": format_time(cp.created_at), "signature": cp.signature}, sort_keys=True)


head = sequencing.head  # (seq, hash) of the newest event


def _lock_chain() -> None:
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_advisory_xact_lock(%s)", [AUDIT_LOCK_KEY])


@transaction.atomic
def write_checkpoint(reason: str = "interval") -> AuditCheckpoint:
    """Sign the chain head with the HMAC key; the line is also appended to AUDIT_CHECKPOINT_FILE after
    commit. Written by beat's hourly heartbeat and `manage.py audit_checkpoint`, never by a page: the
    signed tree heads (audit.sequencing) are the log's checkpoints now; these keep the chain provable
    with nothing but the standard library and the key."""
    _lock_chain()
    seq, head_hash = head()
    created_at = clock.now()
    signature = sign_checkpoint(settings.AUDIT_CHECKPOINT_KEY, seq, head_hash, format_time(created_at))
    cp = AuditCheckpoint.objects.create(
        created_at=created_at, head_seq=seq, head_hash=head_hash, signature=signature, reason=reason
    )
    transaction.on_commit(lambda: sequencing.ship(checkpoint_line(cp)))
    return cp


@transaction.atomic
def sign_checkpoint_now(actor: AbstractBaseUser) -> AuditTreeHead:
    """A signed checkpoint of the log as it stands, asked for by a person (the desk's "Sign a
    checkpoint now"), beside the ones the sequencer signs on its own. The door checks who may ask
    (auditors) and how often; this signs, and records who asked in the same transaction.

    Audit: `audit.checkpoint_signed` (the tree size and root it signs). Ships the note after commit.
    """
    signed = sequencing.sign_tree_head()
    record(actor, "audit.checkpoint_signed", signed, data={"tree_size": signed.tree_size, "root": signed.root_hash})
    return signed


@transaction.atomic
def write_checkpoint_if_due() -> AuditCheckpoint | None:
    """Heartbeat: one checkpoint per interval even when nothing happened.

    Decided under the chain lock, so two beats (a misconfiguration) still write one per interval.
    """
    _lock_chain()
    last = AuditCheckpoint.objects.order_by("-created_at").values_list("created_at", flat=True).first()
    interval = dt.timedelta(seconds=settings.AUDIT_CHAIN_CHECKPOINT_SECONDS)
    if last is not None and clock.now() - last < interval:
        return None
    return write_checkpoint("interval")


def db_checkpoints() -> list[Checkpoint]:
    return [
        Checkpoint(cp.head_seq, cp.head_hash, format_time(cp.created_at), cp.signature)
        for cp in AuditCheckpoint.objects.order_by("created_at", "id")
    ]


def _db_events(chunk: int = 5000) -> Iterator[tuple[int, str, str, str]]:
    """Events in seq order with the columns cross-checked against the hashed contents."""
    rows = AuditEvent.objects.order_by("seq").values_list(
        "seq", "prev_hash", "hash", "canonical", "occurred_at", "action", "actor_kind", "actor_id", "actor_label",
        "subject_type", "subject_id", "workflow_slug", "reason",
    )
    for (seq, prev_hash, event_hash, canonical, occurred_at, action, actor_kind, actor_id, actor_label,
         subject_type, subject_id, workflow_slug, reason) in rows.iterator(chunk_size=chunk):
        try:
            payload = json.loads(canonical)
            columns_match = (
                payload["action"] == action
                and payload["at"] == format_time(occurred_at)
                and payload["actor"] == {"kind": actor_kind, "id": actor_id, "label": actor_label}
                and payload["subject"] == {"type": subject_type, "id": subject_id}
                and payload["workflow"] == workflow_slug
                and payload["reason"] == reason
            )
        except (ValueError, KeyError, TypeError, AuditError):
            columns_match = False
        # A column that disagrees with the hashed contents is reported as an altered event.
        yield seq, prev_hash, event_hash if columns_match else "column-mismatch", canonical


# The first pass of the verify page. PostgreSQL checks, in the scan that streams the rows, what
# needs neither the key nor a hash: seq continuity from #1, each prev_hash against the hash before
# it, every column against the hashed contents; Python recomputes every hash and checks the seq
# inside the contents. Anything in doubt (a check that fails, contents PostgreSQL cannot parse)
# and the exact walk (_db_events + verify) runs instead and names the first broken event; the
# fast pass never passes what the exact walk would refuse.
_FAST_VERIFY_SQL = """
SELECT seq, prev_hash, hash, canonical,
       coalesce(seq = lag(seq, 1, 0::bigint) OVER w + 1
                AND prev_hash = lag(hash, 1, %(genesis)s) OVER w
                AND c -> 'action' = to_jsonb(action)
                AND c -> 'at' = to_jsonb(to_char(occurred_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"'))
                AND c -> 'actor' = jsonb_build_object('kind', actor_kind, 'id', actor_id, 'label', actor_label)
                AND c -> 'subject' = jsonb_build_object('type', subject_type, 'id', subject_id)
                AND c -> 'workflow' = to_jsonb(workflow_slug)
                AND c -> 'reason' = to_jsonb(reason), false)
FROM governance_auditevent AS e CROSS JOIN LATERAL (SELECT e.canonical::jsonb AS c OFFSET 0) AS parsed
WINDOW w AS (ORDER BY seq)
ORDER BY seq
"""  # OFFSET 0 keeps the parse in its own subquery: once per row, not once per reference to `c`,
# and the scan stays on the primary key's order with no sort
FAST_VERIFY_CHUNK = 500  # rows per network read while streaming
PROGRESS_EVERY = 5000


def _verify_database_fast(checkpoints: list[Checkpoint], progress: Callable[[int], None] | None) -> Report | None:
    """The chain verified in one streamed scan, or None when anything needs the exact walk (and
    on SQLite, the zero-setup database, which has no jsonb). Rows are streamed in chunks, so
    PostgreSQL checks the next rows while Python hashes these."""
    if connection.vendor != "postgresql":
        return None
    walk = _Walk(Report(), {cp.seq for cp in checkpoints}, True)
    wanted, hashes, sha256, fromhex = walk.wanted, walk.hashes, hashlib.sha256, bytes.fromhex
    seq, event_hash = 0, GENESIS
    try:
        with transaction.atomic():
            connection.ensure_connection()
            with connection.connection.cursor() as cursor:
                for seq, prev_hash, event_hash, canonical, fine in cursor.stream(
                        _FAST_VERIFY_SQL, {"genesis": GENESIS}, size=FAST_VERIFY_CHUNK):
                    if (not fine or _inner_seq(canonical) != seq
                            or sha256(fromhex(prev_hash) + canonical.encode()).hexdigest() != event_hash):
                        return None
                    if seq in wanted:
                        hashes[seq] = event_hash
                    if progress is not None and seq % PROGRESS_EVERY == 0:
                        progress(seq)  # seqs run from 1 without a gap (checked above), so seq events are done
    except (DatabaseError, psycopg.Error, ValueError):  # e.g. contents that are not JSON
        return None
    _settle(walk, seq + 1, event_hash)
    return walk.finish(checkpoints, settings.AUDIT_CHECKPOINT_KEY)


def verify_database(extra_checkpoints: list[Checkpoint] | None = None, *,
                    progress: Callable[[int], None] | None = None) -> Report:
    """The whole chain and its signed checkpoints (plus `extra_checkpoints`); `progress(done)` is
    called as events are checked."""
    checkpoints = db_checkpoints() + list(extra_checkpoints or [])
    report = _verify_database_fast(checkpoints, progress)
    if report is None or not report.ok:

        def counted(events: Iterator[tuple[int, str, str, str]]) -> Iterator[tuple[int, str, str, str]]:
            for done, event in enumerate(events, 1):
                if progress is not None and done % PROGRESS_EVERY == 0:
                    progress(done)
                yield event

        report = verify(counted(_db_events()), checkpoints, settings.AUDIT_CHECKPOINT_KEY)
    if report.ok:  # a broken chain is named first; the tree is rebuilt from a chain that holds
        verify_tree(report)
    verify_entries(report)
    if progress is not None:
        progress(report.events)
    return report


_NODES_IN_CREATION_ORDER = """
SELECT level, "index", hash FROM audit_tree_node ORDER BY (("index" + 1) << level) - 1, level
"""


def verify_tree(report: Report) -> None:
    """The Merkle tree rebuilt from the events' canonical bytes: every stored node must be the one
    rebuilt (named if not), and every signed checkpoint must carry the log's signature and the root
    rebuilt at its size."""
    heads = list(AuditTreeHead.objects.order_by("tree_size", "id"))
    wanted_sizes = {h.tree_size for h in heads}
    roots: dict[int, bytes] = {}
    # The right edge of the tree rebuilt so far: the only nodes tlog.new_nodes and tree_root read.
    edge: dict[tuple[int, int], bytes] = {}

    def node(level: int, index: int) -> bytes:
        return edge[(level, index)]

    size = 0
    with connection.cursor() as nodes_cursor:
        nodes_cursor.execute(_NODES_IN_CREATION_ORDER)
        stored = iter(nodes_cursor)
        if 0 in wanted_sizes:
            roots[0] = tlog.tree_root(0, node)
        for canonical in AuditEvent.objects.order_by("seq").values_list("canonical", flat=True).iterator(5000):
            made = tlog.new_nodes(size, [tlog.leaf_hash(canonical.encode("utf-8"))], node)
            size += 1
            edge.update(((level, index), digest) for level, index, digest in made)
            keep = set(sequencing.frontier(size))
            for key in [key for key in edge if key not in keep]:
                del edge[key]
            for want_level, want_index, want_hash in made:
                row = next(stored, None)
                if row is None or (row[0], row[1]) != (want_level, want_index):
                    report.fail(None, f"tree node {want_level}/{want_index} is missing from the stored tree")
                    return
                if bytes(row[2]) != want_hash:
                    report.fail(None, f"tree node {want_level}/{want_index} does not match the events it covers")
                    return
            if size in wanted_sizes:
                roots[size] = tlog.tree_root(size, node)
        if next(stored, None) is not None:
            report.fail(None, f"the stored tree has nodes beyond its {size} leaves")
    try:
        vkey = sequencing.vkey()
    except Exception as exc:  # a key that cannot be read: say so, do not pass
        report.fail(None, f"the checkpoints cannot be checked: {exc}")
        return
    for head_row in heads:
        where = f"checkpoint {head_row.pk} (tree size {head_row.tree_size})"
        try:
            origin, signed_size, signed_root = tlog.parse_checkpoint(tlog.open_note(head_row.note, vkey))
        except tlog.NoteError as exc:
            report.fail(None, f"{where}: {exc}")
            continue
        if signed_size != head_row.tree_size or signed_root.hex() != head_row.root_hash:
            report.fail(None, f"{where}: its row does not say what its signed note says")
        elif signed_size > size:
            report.fail(None, f"{where}: signs {signed_size} leaves, the log has {size}: events were removed")
        elif roots.get(signed_size) != signed_root:
            report.fail(None, f"{where}: the events up to #{signed_size} are not the ones it signed")
        else:
            report.notes.append(f"{where} verified with {origin}'s key")


def verify_entries(report: Report) -> None:
    """Entries not placed yet: each must still carry its MAC, and none may wait beyond the maximum
    merge delay (AUDIT_MERGE_DELAY_SECONDS)."""
    cutoff = clock.now() - dt.timedelta(seconds=settings.AUDIT_MERGE_DELAY_SECONDS)
    pending = AuditEntry.objects.filter(event__isnull=True).order_by("id").values_list(
        "id", "occurred_at", "canonical", "mac")
    for entry_id, occurred_at, canonical, mac in pending.iterator(1000):
        if not hmac.compare_digest(mac, sequencing.entry_mac(canonical)):
            report.fail(None, f"entry {entry_id} was altered after it was accepted (its MAC does not match)")
        elif occurred_at < cutoff:
            waited = (clock.now() - occurred_at).total_seconds()
            report.fail(None, f"entry {entry_id} accepted at {format_time(occurred_at)} is not sequenced after "
                              f"{waited:.1f} s (maximum merge delay {settings.AUDIT_MERGE_DELAY_SECONDS:g} s)")
