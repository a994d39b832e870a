"""The auditors' desk: search the decision log, read one event, export a search, verify the log.

Reading never writes: an export streams the events up to the newest signed checkpoint already
written (the sequencer signs one within seconds of every change) and ends with it; only an
auditor's POST ("Sign a checkpoint now", audited, at most one per CHECKPOINT_COOLDOWN_SECONDS each)
signs a new one. Checks of the chain and of uploaded files run as background jobs (audit.jobs).
Scope: auditors read every workflow and see the checkpoints; everyone else only the events of the
workflows they may see (`selectors.audit_events_visible_to`), with no checkpoint (it would tell
them the size of the whole log).
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import json
import math
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from itertools import batched

from django import forms
from django.conf import settings
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.cache import caches
from django.core.files.uploadhandler import FileUploadHandler, StopUpload
from django.core.paginator import Paginator
from django.db import connection, transaction
from django.db.models import Case, F, Q, QuerySet, TextField, Value, When
from django.db.models.expressions import RawSQL
from django.db.models.functions import Cast, Concat
from django.http import Http404, HttpRequest, HttpResponse, QueryDict, StreamingHttpResponse
from django.shortcuts import redirect, render
from django.urls import reverse
from django.utils import timezone
from django.views.decorators.csrf import csrf_exempt, csrf_protect
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from audit import jobs, sequencing
from audit import log as audit
from audit.jobs import Progress, progress_store, read_progress
from audit.models import AuditCheckpoint, AuditEvent, AuditTreeHead, VerifyUpload
from audit.verify_audit import chain_hash
from core import clock, denials
from core.publishing import publish
from governance import selectors

PAGE_SIZE = 50
REQUEST_SUBJECT = "approvals.approvalrequest"
EXPORT_CHUNK = 5000
PROGRESS_EVERY = 20_000
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
    trace = forms.RegexField(required=False, regex=r"^\s*[0-9a-fA-F]{32}\s*$", label="Trace id",
                             help_text="the 32 hex digits of an OpenTelemetry trace",
                             error_messages={"invalid": "A trace id is 32 hexadecimal digits."})

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
    if trace := criteria.get("trace", "").strip().lower():  # a scan of the contents, like the words below
        events = events.filter(canonical__contains=f'"trace":"{trace}"')
    if words := criteria.get("words", "").split():
        events = events.annotate(data_text=Cast("data", TextField()))
        for word in words:
            events = events.filter(Q(reason__icontains=word) | Q(data_text__icontains=word))
    return events


def _search_form(request: HttpRequest, params: QueryDict | None = None) -> AuditSearchForm:
    params = (request.GET if params is None else params).copy()
    for transient in ("page", "progress"):
        params.pop(transient, None)
    return AuditSearchForm(params or None, user=request.user)


def _query_string(form: AuditSearchForm) -> str:
    return form.data.urlencode() if form.is_bound else ""


def _log_context(request: HttpRequest, form: AuditSearchForm) -> dict:
    valid = not form.is_bound or form.is_valid()
    events = search_events(request.user, form.cleaned_data if form.is_bound and valid else {})
    page = Paginator(events.order_by("-seq"), PAGE_SIZE).get_page(request.GET.get("page")) if valid else None
    auditor = selectors.reads_everything(request.user)
    return {
        "form": form,
        "page": page,
        "query": _query_string(form),
        "progress_token": uuid.uuid4().hex,
        "may_verify": auditor,
        "signed": newest_signed() if auditor else None,
    }


@require_GET
@login_required
def search(request: HttpRequest) -> HttpResponse:
    form = _search_form(request)
    context = _log_context(request, form)
    return render(request, "audit/audit_log.html", context, status=200 if context["page"] is not None else 422)


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
        "trace_id": payload.get("trace", ""),
        "trace_url": trace_url(payload.get("trace", "")),
    }
    return render(request, "audit/event_detail.html", context)


def trace_url(trace_id: str) -> str | None:
    """The trace in the tracing UI (OTEL_TRACE_URL_TEMPLATE), for an event recorded under a span."""
    if not trace_id or not settings.OTEL_TRACE_URL_TEMPLATE:
        return None
    return settings.OTEL_TRACE_URL_TEMPLATE.replace("{trace_id}", trace_id)


def evidence_url(subject_type: str, subject_id: str) -> str | None:
    """The evidence bundle of an approval request."""
    if subject_type != REQUEST_SUBJECT or not subject_id.isdigit():
        return None
    return reverse("evidence:page", args=[int(subject_id)])


# --- export --------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Signed:
    """Where an export stops: the newest signed checkpoints already written, and the log size they bound."""

    size: int
    tree_head: AuditTreeHead | None  # the newest Ed25519 checkpoint (C2SP tlog-checkpoint)
    checkpoint: AuditCheckpoint | None  # the newest HMAC checkpoint of the chain

    @property
    def at(self) -> dt.datetime | None:
        """When the checkpoint at `size` was signed; None when nothing is signed yet."""
        times = []
        if self.tree_head is not None and self.tree_head.tree_size == self.size:
            times.append(self.tree_head.created_at)
        if self.checkpoint is not None and self.checkpoint.head_seq == self.size:
            times.append(self.checkpoint.created_at)
        return max(times, default=None)


def newest_signed() -> Signed:
    """Exports read this and write nothing. With no checkpoint at all (a log seconds old) they
    stop at the head, unsigned."""
    tree_head = sequencing.latest_tree_head()
    checkpoint = AuditCheckpoint.objects.order_by("-head_seq", "-created_at", "-id").first()
    sizes = [tree_head.tree_size] if tree_head else []
    sizes += [checkpoint.head_seq] if checkpoint else []
    return Signed(max(sizes) if sizes else audit.head()[0], tree_head, checkpoint)


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


def _csv_row(**values: object) -> str:
    buffer = io.StringIO()
    row = dict.fromkeys(CSV_COLUMNS, "")
    row.update(values)
    csv.writer(buffer, lineterminator="\n").writerow(row.values())
    return buffer.getvalue()


def _checkpoint_csv(cp: AuditCheckpoint) -> str:
    return _csv_row(type="checkpoint", seq=cp.head_seq, at=audit.format_time(cp.created_at), hash=cp.head_hash,
                    signature=cp.signature)


def _tree_head_csv(signed: AuditTreeHead) -> str:
    """The signed note whole in `signature` (a quoted cell of several lines); `hash` is the root, hex."""
    return _csv_row(type="tlog_checkpoint", seq=signed.tree_size, at=audit.format_time(signed.created_at),
                    hash=signed.root_hash, signature=signed.note)


@dataclass(frozen=True)
class ExportFormat:
    header: str
    body: Callable[[QuerySet[AuditEvent]], Iterator[tuple[int, str | bytes]]]
    checkpoint: Callable[[AuditCheckpoint], str]
    tree_head: Callable[[AuditTreeHead], str]
    content_type: str


EXPORT_FORMATS = {
    "jsonl": ExportFormat("", _jsonl_body, lambda cp: audit.checkpoint_line(cp) + "\n",
                          lambda signed: sequencing.tree_head_line(signed) + "\n",
                          "application/x-ndjson; charset=utf-8"),
    "csv": ExportFormat(",".join(CSV_COLUMNS) + "\n", _csv_body, _checkpoint_csv, _tree_head_csv,
                        "text/csv; charset=utf-8"),
}


def export_stream(events: QuerySet[AuditEvent], fmt: str, cp: AuditCheckpoint | None,
                  progress: Progress | None = None, tree_head: AuditTreeHead | None = None, *,
                  size: int | None = None) -> Iterator[str | bytes]:
    """The events up to `size` (by default the newest of the two checkpoints given) in seq order,
    each signed checkpoint right after the last event it covers: the file ends with the newest, and
    the offline verifier meets each where it checks it fastest. A JSON Lines export of the whole
    log is verified offline with the log's public key (the tree head: the Merkle root rebuilt from
    the events) and, with nothing but the standard library, with the HMAC key (the chain checkpoint).

    Memory stays flat: rows come from a server-side cursor or COPY in chunks (inside a transaction,
    so nothing is materialised WITH HOLD) and each chunk is handed on at once.
    """
    render_as = EXPORT_FORMATS[fmt]
    cuts = [(cp.head_seq, 0, render_as.checkpoint(cp))] if cp else []
    if tree_head:
        cuts.append((tree_head.tree_size, 1, render_as.tree_head(tree_head)))
    cuts.sort()
    if size is None:
        size = cuts[-1][0] if cuts else audit.head()[0]
    events = events.filter(seq__lte=size).order_by("seq")
    total = events.count() if progress else 0
    done = reported = 0
    if progress:
        progress.save(state="running", done=0, total=total)
    if render_as.header:
        yield render_as.header
    with transaction.atomic():
        low = 0
        for seq, _, text in [*cuts, (size, 2, "")]:
            if seq > low:
                for count, chunk in render_as.body(events.filter(seq__gt=low, seq__lte=seq)):
                    yield chunk
                    done += count
                    if progress and done - reported >= PROGRESS_EVERY:
                        progress.save(state="running", done=done, total=total)
                        reported = done
                low = seq
            if text:
                yield text
    if progress:
        progress.save(state="done", done=done, total=total, signed=bool(cuts))


def _stamp(at: dt.datetime) -> str:
    return at.astimezone(dt.UTC).strftime("%Y%m%dT%H%M%SZ")


@require_GET
@login_required
def export(request: HttpRequest, fmt: str) -> HttpResponse:
    if fmt not in EXPORT_FORMATS:
        raise Http404("No such export format.")
    form = _search_form(request)
    if form.is_bound and not form.is_valid():
        return search(request)
    events = search_events(request.user, form.cleaned_data if form.is_bound else {})
    token = request.GET.get("progress", "")
    progress = None
    if token and len(token) <= 64 and token.isalnum():
        progress = Progress("export", token, request.user.pk, progress_store())
    signed = newest_signed()
    if selectors.reads_everything(request.user):
        stream = export_stream(events, fmt, signed.checkpoint, progress, signed.tree_head, size=signed.size)
        scope = "search" if form.is_filtered else "chain"
        name = f"ringfence-audit-{scope}-{_stamp(signed.at or clock.now())}-to-{signed.size}.{fmt}"
    else:  # the events of their workflows, no checkpoint: it would tell them the size of the whole log
        stream = export_stream(events, fmt, None, progress, None, size=signed.size)
        name = f"ringfence-audit-search-{_stamp(clock.now())}.{fmt}"
    response = StreamingHttpResponse(stream, content_type=EXPORT_FORMATS[fmt].content_type)
    response["Content-Disposition"] = f'attachment; filename="{name}"'
    if selectors.reads_everything(request.user) and signed.at is not None:
        response["X-Ringfence-Checkpoint-Seq"] = str(signed.size)
    response["Cache-Control"] = "no-store"
    return response


@require_GET
@login_required
def export_progress(request: HttpRequest, token: str) -> HttpResponse:
    state = read_progress("export", token, request.user)
    return render(request, "audit/audit_log.html#export-progress", {"export": state, "progress_token": token})


# --- signing a checkpoint on request ---------------------------------------------------------------

CHECKPOINT_COOLDOWN_SECONDS = 10


def cooldown_key(user_pk: int) -> str:
    return f"ringfence:audit-sign-checkpoint:{user_pk}"


def _checkpoint_wait(user) -> int:
    """0 when `user` may have a checkpoint signed now (and the next CHECKPOINT_COOLDOWN_SECONDS are
    counted from now), else the seconds to wait. One atomic add in the shared cache (Redis SET NX):
    two web processes cannot both let the same person through."""
    key = cooldown_key(user.pk)
    until = time.time() + CHECKPOINT_COOLDOWN_SECONDS
    store = caches["default"]
    if store.add(key, until, CHECKPOINT_COOLDOWN_SECONDS):
        return 0
    held = store.get(key)
    return max(1, math.ceil((held if isinstance(held, float) else until) - time.time()))


@require_POST
@login_required
def sign_checkpoint(request: HttpRequest) -> HttpResponse:
    """Auditors only; at most one per person every CHECKPOINT_COOLDOWN_SECONDS (429 with Retry-After)."""
    if not selectors.reads_everything(request.user):
        raise denials.forbidden(request, "Only auditors sign checkpoints of the audit log.")
    form = _search_form(request, QueryDict(request.POST.get("query", "")))
    if wait := _checkpoint_wait(request.user):
        context = _log_context(request, form)
        context["sign_refused"] = (f"You asked for a checkpoint less than {CHECKPOINT_COOLDOWN_SECONDS} s ago: ask "
                                   f"again in {wait} s. The log also signs one by itself within seconds of every "
                                   "change.")
        response = render(request, "audit/audit_log.html", context, status=429)
        response["Retry-After"] = str(wait)
        return response
    signed = audit.sign_checkpoint_now(request.user)
    messages.success(request, f"Signed a checkpoint of the log's {signed.tree_size} events; exports now end with it.")
    query = _query_string(form)
    return redirect(reverse("audit:log") + (f"?{query}" if query else ""))


# --- verification --------------------------------------------------------------------------------

def _require_auditor(request: HttpRequest) -> None:
    if not selectors.reads_everything(request.user):
        raise denials.forbidden(request, "Only auditors verify the whole audit chain.")


class VerifyUploadForm(forms.Form):
    kind = forms.ChoiceField(
        label="The file is", initial="chain", widget=forms.RadioSelect,
        choices=[("chain", "the whole chain (exported with no search filters): every event must be there"),
                 ("excerpt", "an excerpt (the export of a search): its events are matched against this database")],
    )
    export = forms.FileField(label="Export file (JSON Lines)")


# The multipart framing and the form's other fields, on top of the file itself.
UPLOAD_OVERHEAD = 64 << 10


def max_upload_bytes() -> int:
    return settings.AUDIT_VERIFY_MAX_UPLOAD_MB << 20


class CappedUploadHandler(FileUploadHandler):
    """First of the upload handlers: counts each file's bytes as they arrive and stops the upload
    past the cap. Django then reads the rest of the request and drops it; the handlers after this
    one delete what they had written, so nothing of the file is kept."""

    def __init__(self, request: HttpRequest, limit: int) -> None:
        super().__init__(request)
        self.limit, self.exceeded = limit, False

    def receive_data_chunk(self, raw_data: bytes, start: int) -> bytes:
        if start + len(raw_data) > self.limit:
            self.exceeded = True
            for handler in self.request.upload_handlers:
                if handler is not self:
                    handler.upload_interrupted()
            raise StopUpload(connection_reset=False)
        return raw_data

    def file_complete(self, file_size: int) -> None:
        return None


def _verify_context(form: VerifyUploadForm, upload_error: str = "") -> dict:
    return {
        "form": form,
        "upload_error": upload_error,
        "max_upload_mb": settings.AUDIT_VERIFY_MAX_UPLOAD_MB,
        "head": audit.head(),
        "signed": newest_signed(),
    }


def _too_large(request: HttpRequest) -> HttpResponse:
    limit = settings.AUDIT_VERIFY_MAX_UPLOAD_MB
    message = (f"This file is larger than {limit} MB, the most the verify page takes "
               "(AUDIT_VERIFY_MAX_UPLOAD_MB). Nothing was uploaded or kept. Verify it on your own machine with the "
               "standalone script, which has no limit (see below), or export a narrower search.")
    return render(request, "audit/audit_verify.html", _verify_context(VerifyUploadForm(), message), status=413)


def _content_length(request: HttpRequest) -> int:
    try:
        return int(request.META.get("CONTENT_LENGTH") or 0)
    except ValueError:
        return 0  # Django's parser refuses it (400)


@csrf_exempt  # the size is checked before the body is read; the CSRF check follows in _receive_upload
@require_http_methods(["GET", "HEAD", "POST"])
@login_required
def verify_page(request: HttpRequest) -> HttpResponse:
    _require_auditor(request)
    if request.method != "POST":
        return render(request, "audit/audit_verify.html", _verify_context(VerifyUploadForm()))
    limit = max_upload_bytes()
    if _content_length(request) > limit + UPLOAD_OVERHEAD:
        return _too_large(request)  # refused on its declared length: not one byte of the body read
    capped = CappedUploadHandler(request, limit)
    request.upload_handlers.insert(0, capped)
    return _receive_upload(request, capped)


@csrf_protect
def _receive_upload(request: HttpRequest, capped: CappedUploadHandler) -> HttpResponse:
    """Keep the file for a worker and show its job's page, where the progress and the verdict appear."""
    form = VerifyUploadForm(request.POST, request.FILES)
    if capped.exceeded:
        return _too_large(request)
    if not form.is_valid():
        return render(request, "audit/audit_verify.html", _verify_context(form), status=422)
    upload = jobs.store_upload(request.user, form.cleaned_data["export"], form.cleaned_data["kind"])
    job = jobs.queue_upload(upload)
    return redirect("audit:verify_job", job=job.token)


@require_POST
@login_required
def verify_start(request: HttpRequest) -> HttpResponse:
    _require_auditor(request)
    job = Progress("verify", uuid.uuid4().hex, request.user.pk, progress_store(), {"what": "chain"})
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
    kind_label = dict(VerifyUpload.Kind.choices).get(state.get("kind"), "")
    return render(request, template, {"job": state, "job_id": job, "kind_label": kind_label})
