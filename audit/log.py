"""The audit trail: the only code that writes AuditEvent and AuditCheckpoint.

`record()` appends one event inside the caller's transaction. The chain head is read under a
transaction-scoped advisory lock (PostgreSQL), so appends are linear under concurrent writers;
`UNIQUE(seq)` and `UNIQUE(prev_hash)` are the backstops. Call it as the last statement of a
service transaction: the lock is held until COMMIT. On PostgreSQL the head read, the canonical
bytes and their SHA-256 are one INSERT … SELECT, so the lock is held for one statement and the
COMMIT (bench/audit_append.py).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import math
import re
import uuid
from collections.abc import Callable, Iterator
from decimal import Decimal
from enum import Enum
from typing import Any

import psycopg
from django.conf import settings
from django.contrib.auth.models import AbstractBaseUser
from django.db import DatabaseError, connection, models, transaction

from audit.models import AuditCheckpoint, AuditEvent
from audit.verify_audit import (
    FORMAT_VERSION,
    GENESIS,
    Checkpoint,
    Report,
    _inner_seq,
    _settle,
    _Walk,
    canonical_json,
    chain_hash,
    sign_checkpoint,
    verify,
)
from core import clock
from core.db import row_of_batch

# Arbitrary constant shared by every writer of the chain: pg_advisory_xact_lock(AUDIT_LOCK_KEY).
AUDIT_LOCK_KEY = 0x52494E47  # "RING"
ACTION_PATTERN = re.compile(r"^[a-z][a-z_]*\.[a-z][a-z_.]*$")
MAX_REASON = 10_000
# Lengths of the AuditEvent columns that repeat parts of the hashed contents.
COLUMN_LIMITS = {"actor": 150, "subject type": 64, "subject id": 64, "workflow": 63}
MAX_INT_BITS = 10_000  # ~3,000 digits: below Python's int/str conversion limit, so exports stay readable


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


def record(actor: Any, action: str, subject: Any, data: dict | None = None, reason: str = "",
           *, workflow: Any = None) -> AuditEvent:
    """Append one event to the chain inside the caller's transaction and return it."""
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
    # Everything but the position in the chain is prepared before the chain lock is taken.
    params = append_params(columns)
    if connection.vendor == "postgresql":
        seq, prev_hash, event_hash = _append_postgresql(params)
        canonical = canonical_at(params, seq)
    else:  # SQLite: writers are serialised by BEGIN IMMEDIATE
        with connection.cursor() as cursor:
            cursor.execute("SELECT seq, hash FROM governance_auditevent ORDER BY seq DESC LIMIT 1")
            head = cursor.fetchone()
        seq, prev_hash = (head[0] + 1, head[1]) if head else (1, GENESIS)
        canonical = canonical_at(params, seq)
        event_hash = chain_hash(prev_hash, canonical)
        return AuditEvent.objects.create(seq=seq, canonical=canonical, prev_hash=prev_hash, hash=event_hash,
                                         **columns)
    event = AuditEvent(seq=seq, canonical=canonical, prev_hash=prev_hash, hash=event_hash, **columns)
    event._state.adding, event._state.db = False, connection.alias
    return event


_SEQ_PLACEHOLDER = '"seq":0,'

# One statement under the lock: read the head, build the canonical bytes with seq = head + 1,
# hash them with PostgreSQL's sha256() exactly as verify_audit.chain_hash does, insert. It is sent
# with the lock in one round trip; being a statement of its own, it reads the head with a snapshot
# taken once the lock is held. The lock is therefore held for one statement and the COMMIT.
_LOCK_AND_APPEND_SQL = f"""
SELECT pg_advisory_xact_lock({AUDIT_LOCK_KEY});
WITH head AS (
    SELECT top.seq + 1 AS seq, COALESCE(prev.hash, '{GENESIS}') AS prev_hash
    FROM (SELECT COALESCE(max(seq), 0) AS seq FROM governance_auditevent) AS top
    LEFT JOIN governance_auditevent AS prev ON prev.seq = top.seq
)
INSERT INTO governance_auditevent (seq, occurred_at, actor_kind, actor_id, actor_label, action, subject_type,
                                   subject_id, workflow_slug, reason, data, canonical, prev_hash, hash)
SELECT head.seq, %(occurred_at)s, %(actor_kind)s, %(actor_id)s, %(actor_label)s, %(action)s, %(subject_type)s,
       %(subject_id)s, %(workflow_slug)s, %(reason)s, %(data)s::jsonb,
       %(before_seq)s || head.seq::text || %(after_seq)s, head.prev_hash,
       encode(sha256(decode(head.prev_hash, 'hex')
                     || convert_to(%(before_seq)s || head.seq::text || %(after_seq)s, 'UTF8')), 'hex')
FROM head
RETURNING seq, prev_hash, hash
"""


def _canonical_around_seq(payload: dict) -> tuple[str, str]:
    """The canonical JSON split around the value of the top-level seq (written with seq = 0).

    Keys are sorted and every string is escaped, so the last unescaped `"seq":0,` is the
    top-level one (only "subject", "v" and "workflow" come after it).
    """
    canonical = canonical_json(payload)
    at = canonical.rindex(_SEQ_PLACEHOLDER) + len('"seq":')
    return canonical[:at], canonical[at + 1:]


def append_params(columns: dict) -> dict:
    """The parameters of _LOCK_AND_APPEND_SQL for an event's columns: its canonical JSON split around
    the seq it is given under the lock, and its data as JSON text."""
    before_seq, after_seq = _canonical_around_seq({
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
    return {**columns, "data": json.dumps(columns["data"], ensure_ascii=False, allow_nan=False),
            "before_seq": before_seq, "after_seq": after_seq}


def canonical_at(params: dict, seq: int) -> str:
    """The event's canonical JSON from append_params once its seq is known (as the append SQL builds it)."""
    return f"{params['before_seq']}{seq}{params['after_seq']}"


def _append_postgresql(params: dict) -> tuple[int, str, str]:
    with connection.cursor() as cursor:
        return row_of_batch(cursor, _LOCK_AND_APPEND_SQL, params, statement=1)


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


def head() -> tuple[int, str]:
    last = AuditEvent.objects.order_by("-seq").values_list("seq", "hash").first()
    return last if last else (0, GENESIS)


def _lock_chain() -> None:
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_advisory_xact_lock(%s)", [AUDIT_LOCK_KEY])


@transaction.atomic
def write_checkpoint(reason: str = "interval") -> AuditCheckpoint:
    """Sign the current head; the line is also appended to AUDIT_CHECKPOINT_FILE after commit."""
    _lock_chain()
    seq, head_hash = head()
    created_at = clock.now()
    signature = sign_checkpoint(settings.AUDIT_CHECKPOINT_KEY, seq, head_hash, format_time(created_at))
    cp = AuditCheckpoint.objects.create(
        created_at=created_at, head_seq=seq, head_hash=head_hash, signature=signature, reason=reason
    )
    transaction.on_commit(lambda: _ship_checkpoint(cp))
    return cp


def _ship_checkpoint(cp: AuditCheckpoint) -> None:
    path = settings.AUDIT_CHECKPOINT_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", encoding="utf-8") as fh:
        fh.write(checkpoint_line(cp) + "\n")


@transaction.atomic
def write_checkpoint_if_due() -> AuditCheckpoint | None:
    """Heartbeat: one checkpoint per interval even when nothing happened.

    Decided under the chain lock, so two beats (a misconfiguration) still write one per interval.
    """
    _lock_chain()
    last = AuditCheckpoint.objects.order_by("-created_at").values_list("created_at", flat=True).first()
    interval = dt.timedelta(seconds=settings.AUDIT_CHECKPOINT_INTERVAL_SECONDS)
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
    if progress is not None:
        progress(report.events)
    return report
