"""The auditors' desk: search the decision log, read one event, export a search, verify the chain.

Read-only: nothing here changes state. An export signs a checkpoint of the chain head (a statement
about the chain, not a change to it) and streams the events up to that head, so the file ends
with the signature that proves it. Scope: auditors read every workflow; everyone else only the
events of the workflows they may see (`selectors.audit_events_visible_to`).
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import tempfile
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from itertools import batched

from django import forms
from django.conf import settings
from django.contrib.auth.decorators import login_required
from django.core.cache import BaseCache, caches
from django.core.cache.backends.filebased import FileBasedCache
from django.core.paginator import Paginator
from django.db import connection, transaction
from django.db.models import Case, F, Q, QuerySet, TextField, Value, When
from django.db.models.expressions import RawSQL
from django.db.models.functions import Cast, Concat
from django.http import Http404, HttpRequest, HttpResponse, StreamingHttpResponse
from django.shortcuts import redirect, render
from django.urls import reverse
from django.utils import timezone
from django.views.decorators.http import require_GET, require_POST

from audit import log as audit
from audit import sequencing
from audit.models import AuditCheckpoint, AuditEvent, AuditTreeHead
from audit.verify_audit import (
    Checkpoint,
    DamagedLine,
    Report,
    UnusableInput,
    chain_hash,
    export_checkpoints,
    export_events,
    sign_checkpoint,
    verify_export,
)
from core import denials
from core.publishing import publish
from governance import selectors

PAGE_SIZE = 50
REQUEST_SUBJECT = "approvals.approvalrequest"
EXPORT_CHUNK = 5000
PROGRESS_EVERY = 20_000
PROGRESS_TTL = 6 * 3600
CSV_COLUMNS = (
    "type", "seq", "at", "actor_kind", "actor_id", "actor", "action", "subject_type", "subject_id",
    "workflow", "reason", "data", "prev_hash", "hash", "canonical", "signature",
)


# --- search -------------------------------------------------------------------------------------

class AuditSearchForm(forms.Form):
    workflow = forms.ChoiceField(required=False)
    actor = forms.CharField(required=False, max_length=150, help_text="name or part of it")
    action = forms.CharField(required=False, max_length=64, help_text="starts with, e.g. approval.")
    subject = forms.CharField(required=False, max_length=140, help_text="type, type:id or id")
    since = forms.DateTimeField(required=False, widget=forms.DateTimeInput(attrs={"type": "datetime-local"}))
    until = forms.DateTimeField(required=False, widget=forms.DateTimeInput(attrs={"type": "datetime-local"}))
    words = forms.CharField(required=False, max_length=200, label="Words in reasons",
                            help_text="every word must appear in the justification, reason or data")

    def __init__(self, *args, user, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        slugs = selectors.workflows_visible_to(user).values_list("slug", flat=True)
        self.fields["workflow"].choices = [("", "any workflow")] + [(s, s) for s in slugs]
        if selectors.reads_everything(user):
            self.fields["workflow"].choices.insert(1, ("-", "none (system events)"))

    def clean(self) -> dict:
        data = super().clean()
        if data.get("since") and data.get("until") and data["since"] >= data["until"]:
            self.add_error("until", "The end of the time range must come after its start.")
        return data

    @property
    def is_filtered(self) -> bool:
        return self.is_bound and self.is_valid() and any(self.cleaned_data.values())


def search_events(user, criteria: dict) -> QuerySet[AuditEvent]:
    """The events `user` may read that match the criteria of an AuditSearchForm; unordered."""
    events = selectors.audit_events_visible_to(user)
    if workflow := criteria.get("workflow"):
        events = events.filter(workflow_slug="" if workflow == "-" else workflow)
    if actor := criteria.get("actor", "").strip():
        events = events.filter(actor_label__icontains=actor)
    if action := criteria.get("action", "").strip():
        events = events.filter(action__startswith=action)
    if subject := criteria.get("subject", "").strip():
        if ":" in subject:
            kind, _, pk = subject.rpartition(":")
        else:
            kind, pk = (subject, "") if "." in subject else ("", subject)
        if kind:
            events = events.filter(subject_type=kind.lower())
        if pk:
            events = events.filter(subject_id=pk)
    if since := criteria.get("since"):
        events = events.filter(occurred_at__gte=since)
    if until := criteria.get("until"):
        events = events.filter(occurred_at__lt=until)
    if words := criteria.get("words", "").split():
        events = events.annotate(data_text=Cast("data", TextField()))
        for word in words:
            events = events.filter(Q(reason__icontains=word) | Q(data_text__icontains=word))
    return events


def _search_form(request: HttpRequest) -> AuditSearchForm:
    params = request.GET.copy()
    for transient in ("page", "progress"):
        params.pop(transient, None)
    return AuditSearchForm(params or None, user=request.user)


def _query_string(form: AuditSearchForm) -> str:
    return form.data.urlencode() if form.is_bound else ""


@require_GET
@login_required
def search(request: HttpRequest) -> HttpResponse:
    form = _search_form(request)
    valid = not form.is_bound or form.is_valid()
    events = search_events(request.user, form.cleaned_data if form.is_bound and valid else {})
    page = Paginator(events.order_by("-seq"), PAGE_SIZE).get_page(request.GET.get("page")) if valid else None
    context = {
        "form": form,
        "page": page,
        "query": _query_string(form),
        "progress_token": uuid.uuid4().hex,
        "may_verify": selectors.reads_everything(request.user),
    }
    return render(request, "audit/audit_log.html", context, status=200 if valid else 422)


# --- one event -----------------------------------------------------------------------------------

@require_GET
@login_required
def event_detail(request: HttpRequest, seq: int) -> HttpResponse:
    visible = selectors.audit_events_visible_to(request.user)
    event = denials.get_in_scope(request, visible, "audit event", seq=seq)
    previous = visible.filter(seq=seq - 1).first()
    following = visible.filter(seq=seq + 1).first()
    payload = audit.event_payload(event)
    context = {
        "event": event,
        "payload": json.dumps(payload, indent=2, ensure_ascii=False, sort_keys=True),
        "hash_ok": chain_hash(event.prev_hash, event.canonical) == event.hash,
        "previous": previous,
        "previous_links": previous is None or previous.hash == event.prev_hash,
        "following": following,
        "following_links": following is None or following.prev_hash == event.hash,
        "about_subject": visible.filter(subject_type=event.subject_type, subject_id=event.subject_id)
        .exclude(seq=seq).order_by("seq")[:50],
        "evidence_url": evidence_url(event.subject_type, event.subject_id),
    }
    return render(request, "audit/event_detail.html", context)


def evidence_url(subject_type: str, subject_id: str) -> str | None:
    """The evidence bundle of an approval request."""
    if subject_type != REQUEST_SUBJECT or not subject_id.isdigit():
        return None
    return reverse("evidence:page", args=[int(subject_id)])


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

    def save(self, **state: object) -> None:
        self.store.set(_progress_key(self.kind, self.token), {"owner": self.owner, **state}, PROGRESS_TTL)


def read_progress(kind: str, token: str, user) -> dict | None:
    state = progress_store().get(_progress_key(kind, token))
    if state is None or state.get("owner") != user.pk:
        return None
    return state


# --- export --------------------------------------------------------------------------------------

def _jsonl_body(events: QuerySet[AuditEvent]) -> Iterator[tuple[int, str]]:
    rows = events.values_list("seq", "prev_hash", "hash", "canonical").iterator(chunk_size=EXPORT_CHUNK)
    for batch in batched(rows, EXPORT_CHUNK):
        yield len(batch), "\n".join(map(audit.export_line, batch)) + "\n"


# The time as the hashed contents spell it (audit.format_time), rendered by PostgreSQL.
AT_UTC = RawSQL("""to_char(occurred_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"')""", [],
                output_field=TextField())


# Free-text cells a spreadsheet would run as a formula (OWASP "CSV injection"): a cell starting with
# = + - @, a tab or a carriage return is written with a leading apostrophe. `canonical` (and the hashes)
# stay exact, so the file still verifies; the JSON Lines export is never altered.
SPREADSHEET_UNSAFE = ("actor_id", "actor_label", "subject_type", "subject_id", "workflow_slug", "reason")


def _spreadsheet_safe(column: str) -> Case:
    return Case(When(**{f"{column}__regex": r"^[=+@\t\r-]"}, then=Concat(Value("'"), F(column))),
                default=F(column), output_field=TextField())


def _csv_body(events: QuerySet[AuditEvent]) -> Iterator[tuple[int, str | bytes]]:
    """CSV rows in CSV_COLUMNS order. On PostgreSQL the server renders them (COPY … TO STDOUT, the
    engine behind psql's \\copy); elsewhere Python's csv module does."""
    yield 0, ",".join(CSV_COLUMNS) + "\n"
    postgres = connection.vendor == "postgresql"
    safe = {f"safe_{column}": _spreadsheet_safe(column) for column in SPREADSHEET_UNSAFE}
    rows = events.annotate(row_type=Value("event"), data_text=Cast("data", TextField()), signature=Value(""),
                           **({"at": AT_UTC} if postgres else {}), **safe).values_list(
        "row_type", "seq", "at" if postgres else "occurred_at", "actor_kind", "safe_actor_id", "safe_actor_label",
        "action", "safe_subject_type", "safe_subject_id", "safe_workflow_slug", "safe_reason", "data_text", "prev_hash",
        "hash", "canonical", "signature")
    if not postgres:
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        for batch in batched(rows.iterator(chunk_size=EXPORT_CHUNK), EXPORT_CHUNK):
            writer.writerows((*row[:2], audit.format_time(row[2]), *row[3:]) for row in batch)
            yield len(batch), buffer.getvalue()
            buffer.seek(0)
            buffer.truncate()
        return
    sql, params = rows.query.sql_with_params()
    with connection.cursor() as cursor:
        cursor.execute("SET LOCAL statement_timeout = 0")  # one long statement; the client sets the pace
        with cursor.cursor.copy(f"COPY ({sql}) TO STDOUT WITH (FORMAT csv)", params) as copy:
            block: list[bytes] = []
            for row in copy:
                block.append(bytes(row))
                if len(block) == EXPORT_CHUNK:
                    yield len(block), b"".join(block)
                    block.clear()
            if block:
                yield len(block), b"".join(block)


def _checkpoint_csv(cp: AuditCheckpoint) -> str:
    buffer = io.StringIO()
    row = dict.fromkeys(CSV_COLUMNS, "")
    row.update(type="checkpoint", seq=cp.head_seq, at=audit.format_time(cp.created_at), hash=cp.head_hash,
               signature=cp.signature)
    csv.writer(buffer, lineterminator="\n").writerow(row.values())
    return buffer.getvalue()


EXPORT_FORMATS = {
    # name: (body renderer, checkpoint line, content type)
    "jsonl": (_jsonl_body, lambda cp: audit.checkpoint_line(cp) + "\n", "application/x-ndjson; charset=utf-8"),
    "csv": (_csv_body, _checkpoint_csv, "text/csv; charset=utf-8"),
}


def export_stream(events: QuerySet[AuditEvent], fmt: str, cp: AuditCheckpoint,
                  progress: Progress | None = None, tree_head: AuditTreeHead | None = None) -> Iterator[str | bytes]:
    """The events up to the checkpoint's head in seq order, then the signed checkpoint, and (JSON
    Lines of the whole log) the newest signed tree head it covers, which the offline verifier checks
    with the log's public key by rebuilding the Merkle root from the exported events.

    Memory stays flat: rows come from a server-side cursor or COPY in chunks (inside a transaction,
    so nothing is materialised WITH HOLD) and each chunk is handed on at once.
    """
    render_body, checkpoint_text, _ = EXPORT_FORMATS[fmt]
    events = events.filter(seq__lte=cp.head_seq).order_by("seq")
    total = events.count() if progress else 0
    done = reported = 0
    if progress:
        progress.save(state="running", done=0, total=total)
    with transaction.atomic():
        for count, chunk in render_body(events):
            yield chunk
            done += count
            if progress and done - reported >= PROGRESS_EVERY:
                progress.save(state="running", done=done, total=total)
                reported = done
    yield checkpoint_text(cp)
    if tree_head is not None and fmt == "jsonl":
        yield sequencing.tree_head_line(tree_head) + "\n"
    if progress:
        progress.save(state="done", done=done, total=total)


@require_GET
@login_required
def export(request: HttpRequest, fmt: str) -> HttpResponse:
    if fmt not in EXPORT_FORMATS:
        raise Http404("No such export format.")
    form = _search_form(request)
    if form.is_bound and not form.is_valid():
        return search(request)
    events = search_events(request.user, form.cleaned_data if form.is_bound else {})
    cp = audit.write_checkpoint("export")
    token = request.GET.get("progress", "")
    progress = None
    if token and len(token) <= 64 and token.isalnum():
        progress = Progress("export", token, request.user.pk, progress_store())
    scope = "search" if form.is_filtered or not selectors.reads_everything(request.user) else "chain"
    tree_head = (AuditTreeHead.objects.filter(tree_size__lte=cp.head_seq).order_by("-tree_size", "-id").first()
                 if scope == "chain" else None)
    response = StreamingHttpResponse(export_stream(events, fmt, cp, progress, tree_head),
                                     content_type=EXPORT_FORMATS[fmt][2])
    stamp = cp.created_at.strftime("%Y%m%dT%H%M%SZ")
    response["Content-Disposition"] = f'attachment; filename="ringfence-audit-{scope}-{stamp}-to-{cp.head_seq}.{fmt}"'
    response["X-Ringfence-Checkpoint-Seq"] = str(cp.head_seq)
    response["Cache-Control"] = "no-store"
    return response


@require_GET
@login_required
def export_progress(request: HttpRequest, token: str) -> HttpResponse:
    state = read_progress("export", token, request.user)
    return render(request, "audit/audit_log.html#export-progress", {"export": state, "progress_token": token})


# --- verification --------------------------------------------------------------------------------

def _require_auditor(request: HttpRequest) -> None:
    if not selectors.reads_everything(request.user):
        raise denials.forbidden(request, "Only auditors verify the whole audit chain.")


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
    job.save(state="done", done=report.events, total=total, **_report_state(report))
    return report


def run_chain_verification(job_id: str, owner: int) -> None:
    """Entry point of the background task: verify the database chain under this job id."""
    job = Progress("verify", job_id, owner, progress_store())
    try:
        verify_chain(job)
    except Exception as exc:
        job.save(state="failed", error=str(exc)[:500])
        raise


def _report_state(report: Report) -> dict:
    return {"ok": report.ok, "summary": report.summary(), "first_broken_seq": report.first_broken_seq,
            "events": report.events, "checkpoints": report.checkpoints}


def verify_excerpt(events: Iterable[tuple[int, str, str, str] | DamagedLine], checkpoints: list[Checkpoint],
                   key: str) -> Report:
    """An export of a search holds some events of the chain, not all: each is checked on its own
    (its hash, its seq), linked to its neighbour where the neighbour is in the file too, and matched
    against the chain in this database; the signed checkpoint must be on that chain as well."""
    report = Report()
    last: tuple[int, str] | None = None
    for batch in batched(events, 2000):
        seqs = [e[0] for e in batch if not isinstance(e, DamagedLine)]
        stored = dict(AuditEvent.objects.filter(seq__in=seqs).values_list("seq", "hash"))
        for item in batch:
            if isinstance(item, DamagedLine):
                report.fail(None, f"line {item.number} of the export is damaged ({item.problem}).")
                return report
            seq, prev_hash, event_hash, canonical = item
            report.events += 1
            if last and seq <= last[0]:
                report.fail(seq, f"event #{seq} appears out of order or twice.")
            elif chain_hash(prev_hash, canonical) != event_hash:
                report.fail(seq, f"event #{seq}'s contents do not match its hash (the event was altered).")
            elif json.loads(canonical).get("seq") != seq:
                report.fail(seq, f"event #{seq} carries another seq inside its hashed contents.")
            elif last and last[0] == seq - 1 and last[1] != prev_hash:
                report.fail(seq, f"event #{seq} does not link to the event before it (prev_hash differs).")
            elif stored.get(seq) != event_hash:
                report.fail(seq, f"event #{seq} differs from event #{seq} of the chain in this database.")
            if not report.ok:
                return report
            last = (seq, event_hash)
            report.head_seq, report.head_hash = seq, event_hash
    for cp in checkpoints:
        if sign_checkpoint(key, cp.seq, cp.hash, cp.at) != cp.signature:
            report.fail(None, f"checkpoint for #{cp.seq} signed at {cp.at} has an invalid signature.")
        elif AuditEvent.objects.filter(seq=cp.seq, hash=cp.hash).exists() or (cp.seq, cp.hash) == (0, audit.GENESIS):
            report.checkpoints += 1
        else:
            report.fail(cp.seq, f"the signed checkpoint for #{cp.seq} ({cp.at}) is not on the chain in this database.")
    report.notes.append("an excerpt: each event in it is on the chain in this database; an excerpt cannot "
                        "show that no event was left out (export the whole chain for that).")
    return report


@contextlib.contextmanager
def _on_disk(upload) -> Iterator[str]:
    """The uploaded file's path (large uploads already are on disk; small ones are written out)."""
    if hasattr(upload, "temporary_file_path"):
        yield upload.temporary_file_path()
        return
    with tempfile.NamedTemporaryFile(suffix=".jsonl") as fh:
        for chunk in upload.chunks():
            fh.write(chunk)
        fh.flush()
        yield fh.name


def verify_upload(upload, key: str, *, excerpt: bool = False) -> Report:
    """A whole-chain export is checked exactly as the standalone script checks it; an excerpt
    (the export of a search) is checked against the chain in this database."""
    with _on_disk(upload) as path:
        if not excerpt:  # the signed tree heads in it are checked with this log's public key too
            return verify_export(path, key, public_key=sequencing.vkey())
        with open(path, encoding="utf-8", errors="replace") as fh:
            checkpoints = export_checkpoints(fh, skip_damaged=True)
        with open(path, encoding="utf-8", errors="replace") as fh:
            return verify_excerpt(export_events(fh), checkpoints, key)


class VerifyUploadForm(forms.Form):
    export = forms.FileField(label="Export file (JSON Lines)")
    kind = forms.ChoiceField(
        label="The file is", initial="chain", widget=forms.RadioSelect,
        choices=[("chain", "the whole chain (exported with no search filters): every event must be there"),
                 ("excerpt", "an excerpt (the export of a search): its events are matched against this database")],
    )


@login_required
def verify_page(request: HttpRequest) -> HttpResponse:
    _require_auditor(request)
    form, report = VerifyUploadForm(), None
    if request.method == "POST":
        form = VerifyUploadForm(request.POST, request.FILES)
        if form.is_valid():
            try:
                report = verify_upload(form.cleaned_data["export"], settings.AUDIT_CHECKPOINT_KEY,
                                       excerpt=form.cleaned_data["kind"] == "excerpt")
            except UnusableInput as exc:
                form.add_error("export", f"This is not a Ringfence audit export: {exc}")
    context = {
        "form": form,
        "upload": _report_state(report) if report else None,
        "upload_name": form.cleaned_data["export"].name if report else "",
        "head": audit.head(),
        "checkpoint": AuditCheckpoint.objects.order_by("-created_at", "-id").first(),
    }
    status = 422 if form.errors else 200
    template = "audit/audit_verify.html" + ("#upload-result" if request.htmx else "")
    return render(request, template, context, status=status)


@require_POST
@login_required
def verify_start(request: HttpRequest) -> HttpResponse:
    _require_auditor(request)
    job = Progress("verify", uuid.uuid4().hex, request.user.pk, progress_store())
    job.save(state="queued", done=0, total=audit.head()[0], queued_at=timezone.now().isoformat())
    if not publish("audit.tasks.verify_audit_chain", (job.token, request.user.pk)):
        job.save(state="failed", done=0, total=0,
                 error="the task queue is unreachable, so nothing was verified. Start it again in a moment.")
    return redirect("audit:verify_job", job=job.token)


@require_GET
@login_required
def verify_job(request: HttpRequest, job: str) -> HttpResponse:
    _require_auditor(request)
    state = read_progress("verify", job, request.user)
    if state is None:
        raise denials.out_of_scope(request, "verification", job)
    template = "audit/audit_verify_job.html" + ("#job" if request.htmx else "")
    return render(request, template, {"job": state, "job_id": job})
