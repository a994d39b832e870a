"""The auditors' verification jobs, run by a Celery worker while the page shows their progress: the
database chain, and an uploaded export file.

A job's state (queued, running with done/total, then the verdict or why it could not run) is kept
where every web process and worker reads it (`progress_store`), for PROGRESS_TTL, readable only by
the person who started it. An uploaded file waits in the database (audit.models.VerifyUpload) until
a worker has checked it, then it is deleted: nothing of it is kept but the verdict.

Read-only: a check changes nothing of the log, so it writes no audit event.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import os
import tempfile
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import psycopg
from django.conf import settings
from django.core.cache import BaseCache, caches
from django.core.cache.backends.filebased import FileBasedCache
from django.core.files.uploadedfile import UploadedFile
from django.db import connection, transaction

from audit import log as audit
from audit import sequencing
from audit.models import AuditEvent, VerifyUpload, VerifyUploadChunk
from audit.verify_audit import (
    GENESIS,
    Checkpoint,
    NoteError,
    Report,
    TlogCheckpoint,
    UnusableInput,
    _inner_seq,
    _lines,
    chain_hash,
    open_checkpoint,
    parse_line,
    sign_checkpoint,
    verify_export,
)
from core import clock
from core.publishing import publish

PROGRESS_EVERY = 20_000
PROGRESS_TTL = 6 * 3600
PROGRESS_SECONDS = 0.5  # an upload's progress is saved at most this often
UPLOAD_CHUNK = 1 << 20  # bytes per VerifyUploadChunk row
EXCERPT_BATCH = 2000  # events of an excerpt matched against the database per query


# --- progress shared by the web processes and the workers ----------------------------------------

def progress_store() -> BaseCache:
    """Redis when configured (shared by every web process and worker), else files under var/."""
    if settings.REDIS_URL:
        return caches["default"]
    return FileBasedCache(str(settings.VAR_DIR / "progress"), {"TIMEOUT": PROGRESS_TTL})


def _progress_key(kind: str, token: str) -> str:
    return f"ringfence:{kind}:{token}"


@dataclass
class Progress:
    kind: str
    token: str
    owner: int
    store: BaseCache
    fields: dict = field(default_factory=dict)  # saved with every state (what is checked, its name)

    def save(self, **state: object) -> None:
        self.store.set(_progress_key(self.kind, self.token), {"owner": self.owner, **self.fields, **state},
                       PROGRESS_TTL)


def read_progress(kind: str, token: str, user) -> dict | None:
    state = progress_store().get(_progress_key(kind, token))
    if state is None or state.get("owner") != user.pk:
        return None
    return state


def report_state(report: Report) -> dict:
    return {"ok": report.ok, "summary": report.summary(), "first_broken_seq": report.first_broken_seq,
            "events": report.events, "checkpoints": report.checkpoints, "tree_heads": report.tree_heads}


# --- the database chain --------------------------------------------------------------------------

def verify_chain(job: Progress) -> Report:
    """The standalone verifier over the database chain and its signed checkpoints, reporting progress."""
    total = audit.head()[0]
    job.save(state="running", done=0, total=total)
    saved = 0

    def progress(done: int) -> None:
        nonlocal saved
        if done - saved >= PROGRESS_EVERY or done < saved:  # done < saved: the exact walk started over
            saved = done
            job.save(state="running", done=done, total=total)

    report = audit.verify_database(progress=progress)
    job.save(state="done", done=report.events, total=total, **report_state(report))
    return report


def run_chain_verification(job_id: str, owner: int) -> None:
    """Entry point of the background task: verify the database chain under this job id."""
    job = Progress("verify", job_id, owner, progress_store())
    try:
        verify_chain(job)
    except Exception as exc:
        job.save(state="failed", error=str(exc)[:500])
        raise


# --- an uploaded export file -----------------------------------------------------------------------

def upload_job(upload: VerifyUpload) -> Progress:
    return Progress("verify", upload.pk.hex, upload.owner_id, progress_store(),
                    {"what": "file", "name": upload.name, "kind": upload.kind, "size": upload.size,
                     "sha256": upload.sha256})


@transaction.atomic
def store_upload(owner, uploaded: UploadedFile, kind: str) -> VerifyUpload:
    """Keep an uploaded export in the database, 1 MiB a row, for a worker to check; also drop the
    uploads of jobs that never ran (older than PROGRESS_TTL)."""
    now = clock.now()
    VerifyUpload.objects.filter(created_at__lt=now - dt.timedelta(seconds=PROGRESS_TTL)).delete()
    upload = VerifyUpload.objects.create(owner=owner, name=(uploaded.name or "export")[:255], kind=kind,
                                         created_at=now)
    digest, size = hashlib.sha256(), 0
    for index, data in enumerate(uploaded.chunks(UPLOAD_CHUNK)):
        _put_chunk(upload, index, data)
        digest.update(data)
        size += len(data)
    upload.size, upload.sha256 = size, digest.hexdigest()
    upload.save(update_fields=["size", "sha256"])
    return upload


def queue_upload(upload: VerifyUpload) -> Progress:
    """Mark the upload's job queued and, once the upload is committed, ask a worker to check it."""
    job = upload_job(upload)
    job.save(state="queued", done=0, total=upload.size, queued_at=clock.now().isoformat())

    def send() -> None:
        if not publish("audit.tasks.verify_audit_upload", (str(upload.pk),)):
            VerifyUpload.objects.filter(pk=upload.pk).delete()
            job.save(state="failed", done=0, total=upload.size,
                     error="the task queue is unreachable, so the file was neither checked nor kept. "
                           "Upload it again in a moment.")

    transaction.on_commit(send)
    return job


# Django binds parameters into the SQL text on PostgreSQL (client-side binding): a MiB of bytea then
# travels as 2 MiB of escaped hex that the server parses back, 3-4 times slower than the bytes bound
# as they are (49 MiB: 4.0 s against 1.2 s on the shared 2-core machine). The chunks go and come on a
# server-binding cursor of the same connection, inside the same transaction.
_PUT_CHUNK = 'INSERT INTO audit_verify_upload_chunk (upload_id, "index", data) VALUES (%s, %s, %b)'
_GET_CHUNK = 'SELECT data FROM audit_verify_upload_chunk WHERE upload_id = %s AND "index" = %s'


def _put_chunk(upload: VerifyUpload, index: int, data: bytes) -> None:
    if connection.vendor != "postgresql":
        VerifyUploadChunk.objects.create(upload=upload, index=index, data=data)
        return
    connection.ensure_connection()
    with psycopg.Cursor(connection.connection) as cursor:
        cursor.execute(_PUT_CHUNK, [upload.pk, index, data])


def _get_chunk(upload: VerifyUpload, index: int) -> bytes:
    if connection.vendor != "postgresql":
        return bytes(VerifyUploadChunk.objects.values_list("data", flat=True).get(upload=upload, index=index))
    connection.ensure_connection()
    with psycopg.Cursor(connection.connection) as cursor:
        cursor.execute(_GET_CHUNK, [upload.pk, index], binary=True)
        return bytes(cursor.fetchone()[0])


def _write_out(upload: VerifyUpload, path: str) -> None:
    """The upload's bytes into a file of the worker's, one chunk in memory at a time."""
    count = upload.chunks.count()
    with open(path, "wb") as fh:
        for index in range(count):
            fh.write(_get_chunk(upload, index))


def _throttled(job: Progress, total: int) -> Callable[[int], None]:
    last = 0.0

    def progress(done: int) -> None:
        nonlocal last
        now = time.monotonic()
        if now - last >= PROGRESS_SECONDS:
            last = now
            job.save(state="running", done=min(done, total), total=total)

    return progress


def verify_file(path: str, kind: str, progress: Callable[[int], None] | None = None) -> Report:
    """A whole-chain export is checked exactly as the standalone script checks it (with this log's
    public key for its signed tree heads); an excerpt (the export of a search) against the log in
    this database. UnusableInput names the first line that is not an export line."""
    if kind == VerifyUpload.Kind.CHAIN:
        return verify_export(path, settings.AUDIT_CHECKPOINT_KEY, public_key=sequencing.vkey(), progress=progress)
    with open(path, "rb") as fh:
        return verify_excerpt(_lines(fh, progress=progress), settings.AUDIT_CHECKPOINT_KEY)


def run_upload_verification(upload_id: str) -> str:
    """Entry point of the background task: check an uploaded file, report, then delete it. Answers
    the verdict ("intact", "broken", "unusable"), or "gone" when the upload was already checked."""
    upload = VerifyUpload.objects.filter(pk=upload_id).first()
    if upload is None:
        return "gone"
    job = upload_job(upload)
    try:
        with tempfile.TemporaryDirectory(prefix="ringfence-verify-") as scratch:
            path = os.path.join(scratch, "export.jsonl")
            _write_out(upload, path)
            job.save(state="running", done=0, total=upload.size)
            try:
                report = verify_file(path, upload.kind, _throttled(job, upload.size))
            except UnusableInput as exc:
                job.save(state="done", done=upload.size, total=upload.size, ok=False, unusable=str(exc))
                return "unusable"
        job.save(state="done", done=upload.size, total=upload.size, **report_state(report))
        return "intact" if report.ok else "broken"
    except Exception as exc:
        job.save(state="failed", error=str(exc)[:500])
        raise
    finally:
        VerifyUpload.objects.filter(pk=upload.pk).delete()


def verify_excerpt(lines: Iterable[bytes | str], key: str) -> Report:
    """An export of a search holds some events of the log, not all: each is checked on its own
    (its hash, its seq), linked to its neighbour where the neighbour is in the file too, and matched
    against the log in this database; its signed checkpoints must be this log's too (an HMAC
    checkpoint on the chain here, a tree head signed with this log's key over the same tree).
    One pass in file order: the first problem met is the one named."""
    report = Report()
    checkpoints: list[Checkpoint] = []
    heads: list[TlogCheckpoint] = []
    pending: list[tuple[int, str, str, str]] = []
    last: tuple[int, str] | None = None

    def check(batch: list[tuple[int, str, str, str]]) -> bool:
        nonlocal last
        stored = dict(AuditEvent.objects.filter(seq__in=[e[0] for e in batch]).values_list("seq", "hash"))
        for seq, prev_hash, event_hash, canonical in batch:
            report.events += 1
            if last and seq <= last[0]:
                report.fail(seq, f"event #{seq} appears out of order or twice.")
            elif chain_hash(prev_hash, canonical) != event_hash:
                report.fail(seq, f"event #{seq}'s contents do not match its hash (the event was altered).")
            elif _inner_seq(canonical) != seq:
                report.fail(seq, f"event #{seq} carries another seq inside its hashed contents.")
            elif last and last[0] == seq - 1 and last[1] != prev_hash:
                report.fail(seq, f"event #{seq} does not link to the event before it (prev_hash differs).")
            elif stored.get(seq) != event_hash:
                report.fail(seq, f"event #{seq} differs from event #{seq} of the log in this database.")
            if not report.ok:
                return False
            last = (seq, event_hash)
            report.head_seq, report.head_hash = seq, event_hash
        return True

    for number, line in enumerate(lines, 1):
        try:
            item = parse_line(number, line)
        except UnusableInput:
            if pending and not check(pending):  # an earlier event was broken: that comes first
                return report
            raise
        if isinstance(item, tuple):
            pending.append(item)
            if len(pending) == EXCERPT_BATCH:
                if not check(pending):
                    return report
                pending = []
        elif isinstance(item, Checkpoint):
            checkpoints.append(item)
        elif isinstance(item, TlogCheckpoint):
            heads.append(item)
    if pending and not check(pending):
        return report
    if not (report.events or checkpoints or heads):
        raise UnusableInput("the file holds no events and no checkpoints: it is not a Ringfence audit export.")
    _check_excerpt_checkpoints(report, checkpoints, key)
    _check_excerpt_heads(report, heads)
    report.notes.append("an excerpt: each event in it is on the chain in this database; an excerpt cannot "
                        "show that no event was left out (export the whole chain for that).")
    return report


def _check_excerpt_checkpoints(report: Report, checkpoints: list[Checkpoint], key: str) -> None:
    for cp in checkpoints:
        if sign_checkpoint(key, cp.seq, cp.hash, cp.at) != cp.signature:
            report.fail(None, f"checkpoint for #{cp.seq} signed at {cp.at} has an invalid signature.")
        elif AuditEvent.objects.filter(seq=cp.seq, hash=cp.hash).exists() or (cp.seq, cp.hash) == (0, GENESIS):
            report.checkpoints += 1
        else:
            report.fail(cp.seq, f"the signed checkpoint for #{cp.seq} ({cp.at}) is not on the chain in this database.")


def _check_excerpt_heads(report: Report, heads: list[TlogCheckpoint]) -> None:
    if not heads:
        return
    vkey, size_here = sequencing.vkey(), sequencing.head().size
    for head in heads:
        try:
            origin, size, root = open_checkpoint(head.note, vkey)
        except NoteError as exc:
            report.fail(None, f"{head.where} is not a checkpoint signed with this log's key ({exc}).")
            continue
        try:
            same = size <= size_here and sequencing.root(size) == root
        except sequencing.SequencingError as exc:
            report.fail(None, f"{head.where} cannot be checked against this database: {exc}.")
            continue
        if same:
            report.tree_heads += 1
        else:
            report.fail(None, f"{head.where} ({origin}, tree size {size}) is not a checkpoint of the log in this "
                              "database: the events it signs are not the ones here.")
