"""Signed callbacks: an agent that passed `callback_url` on dispatch is told when its request closes.

When the request leaves pending, Ringfence POSTs the approval's JSON, the very body
`GET /api/v1/approvals/{id}` would answer, to the URL, signed by core.signing as every webhook
Ringfence sends (HMAC-SHA256 over `<timestamp>.<body>`):

    Content-Type: application/json
    X-Ringfence-Timestamp: 1767225600
    X-Ringfence-Signature: v1=<hex hmac_sha256(key, "1767225600." + body)>
    X-Ringfence-Event: approval.closed
    Idempotency-Key: approval-callback-42            (the same on every attempt)

The key is the hex SHA-256 of the bearer token that dispatched (what Ringfence stores of it), so an
agent verifies with its own token (`ringfence_client.callbacks.verify_callback`) and no secret has
to be handed out; one agent cannot forge another's callbacks. A 2xx answer delivers it; 5xx, 408,
409, 425, 429, a timeout or a refused connection are tried again with backoff (1 s, 2 s, 4 s … 5
min, MAX_ATTEMPTS in all); another answer, a redirect (never followed), a target core.outbound refuses
(an address on loopback, a private network, … outside WEBHOOK_ALLOWED_NETWORKS) or the last failure
gives up.
Audit: `approval.callback_registered` (with the dispatch), `approval.callback_delivered` or
`approval.callback_failed` (once, with the attempts), on the approval request.

The model is approvals.models.ApprovalCallback and the task approvals.tasks.deliver_callback (named
TASK); `attempt_delivery` publishes its retries itself; `resend_due()` is the safety net for a lost
message, called by the timer sweep.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import timedelta
from functools import partial
from urllib.parse import urlsplit

from django.conf import settings
from django.db import transaction
from django.db.models import Q

from approvals.models import ApprovalCallback, ApprovalRequest
from approvals.representations import approval_json
from audit import log as audit
from core import clock, outbound, signing
from core.publishing import publish
from governance.models import ApiToken

logger = logging.getLogger(__name__)
TASK = "approvals.callbacks.deliver"
AUDIT_ACTIONS = ("approval.callback_registered", "approval.callback_delivered", "approval.callback_failed")
ACTOR = "system:callbacks"
MAX_URL = ApprovalCallback.MAX_URL
MAX_ATTEMPTS = 10
BACKOFF_SECONDS = (1.0, 300.0)  # first pause, longest pause
# 408 timeout, 409 the same key still in flight at the receiver, 425 too early, 429 throttled.
RETRYABLE_STATUS = {408, 409, 425, 429}


def url_problem(url: str) -> str | None:
    """Why `url` cannot be a callback URL, or None: an absolute http(s) URL with a host, no spaces, and
    not an address written literally that Ringfence does not send to (core.outbound; a name is checked
    when the callback is sent)."""
    if len(url) > MAX_URL:
        return f"Use at most {MAX_URL} characters."
    if any(ch.isspace() or ord(ch) < 32 or ord(ch) == 127 for ch in url):
        return "A URL has no spaces or control characters."
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises on a malformed port
    except ValueError:
        return "This is not a valid URL."
    if parts.scheme.lower() not in ("http", "https"):
        return "Only http:// and https:// callback URLs are accepted."
    if not parts.hostname:
        return "The URL needs a host."
    if (problem := outbound.target_problem(url, label="callback target")) is not None:
        return f"{problem[0].upper()}{problem[1:]}."  # an address Ringfence does not send to
    return None


def destination(url: str) -> str:
    """The URL as audited: scheme, host and path; never credentials or the query, which may carry secrets."""
    parts = urlsplit(url)
    return f"{parts.scheme.lower()}://{parts.hostname}{f':{parts.port}' if parts.port else ''}{parts.path}"


def register(req: ApprovalRequest, *, url: str, token: ApiToken) -> ApprovalCallback:
    """Remember where to send `req`'s outcome (inside the dispatch's transaction). The first URL
    registered for a request stays. A request already closed (an idempotent replay) is sent at once.
    Audit: `approval.callback_registered`."""
    problem = url_problem(url)
    if problem is not None:
        raise ValueError(problem)
    callback, created = ApprovalCallback.objects.get_or_create(
        request=req, defaults={"url": url, "token": token, "created_at": clock.now()})
    if created:
        audit.record(token.service_account, "approval.callback_registered", req,
                     data={"callback": callback.pk, "destination": destination(url)})
        if not req.is_pending:
            transaction.on_commit(partial(publish, TASK, (callback.pk,)))
    return callback


def publish_for_request(request_id: int) -> None:
    """After the commit that closed request `request_id`: send its callback, if it has one."""
    for callback_id in ApprovalCallback.objects.filter(request_id=request_id, state=ApprovalCallback.State.PENDING
                                                       ).values_list("pk", flat=True):
        publish(TASK, (callback_id,))


@dataclass(frozen=True)
class _Attempt:
    callback_id: int
    number: int
    url: str
    key: str
    body: bytes
    idempotency_key: str


@dataclass(frozen=True)
class _Result:
    ok: bool
    retryable: bool
    status: int | None
    error: str = ""


def _lease() -> timedelta:
    return timedelta(seconds=settings.APPROVALS_WEBHOOK_TIMEOUT_SECONDS + 10)


def _backoff(attempts: int) -> float:
    first, longest = BACKOFF_SECONDS
    return min(first * 2 ** (attempts - 1), longest)


@transaction.atomic
def _begin(callback_id: int) -> _Attempt | str:
    """Claim the next attempt (its lease keeps a duplicate message from sending twice), or say why not."""
    callback = (ApprovalCallback.objects.select_for_update(of=("self",)).select_related("request__workflow", "token")
                .filter(pk=callback_id).first())
    if callback is None or callback.state != ApprovalCallback.State.PENDING:
        return "done"
    if callback.request.is_pending:
        return "not_closed"
    now = clock.now()
    if callback.next_attempt_at is not None and callback.next_attempt_at > now:
        return "not_due"
    callback.attempts += 1
    callback.next_attempt_at = now + _lease()
    callback.save(update_fields=["attempts", "next_attempt_at"])
    return _Attempt(callback.pk, callback.attempts, callback.url, callback.token.digest if callback.token else "",
                    approval_json(callback.request), f"approval-callback-{callback.request_id}")


def _post(attempt: _Attempt) -> _Result:
    if not attempt.key:
        return _Result(False, False, None, "the token that registered the callback is gone: nothing to sign with")
    headers = {
        "Content-Type": "application/json",
        "User-Agent": "Ringfence-callbacks/1",
        **signing.sign(attempt.key, attempt.body),
        "X-Ringfence-Event": "approval.closed",
        "Idempotency-Key": attempt.idempotency_key,
    }
    timeout = settings.APPROVALS_WEBHOOK_TIMEOUT_SECONDS
    try:
        answer = outbound.post(attempt.url, attempt.body, headers, timeout=timeout, label="callback target")
    except outbound.Refused as refusal:  # nothing was sent, and nothing ever will be: no retry
        return _Result(False, False, None, str(refusal))
    except TimeoutError:
        return _Result(False, True, None, f"no answer within {timeout} s")
    except OSError as exc:
        return _Result(False, True, None, f"connection failed: {exc.strerror or exc}")
    if 200 <= answer.status < 300:
        return _Result(True, False, answer.status)
    retryable = answer.status >= 500 or answer.status in RETRYABLE_STATUS
    what = "redirects are not followed" if 300 <= answer.status < 400 else f"HTTP {answer.status}"
    return _Result(False, retryable, answer.status, what)


@transaction.atomic
def _finish(attempt: _Attempt, result: _Result) -> str:
    """Record an attempt: delivered, failed for good, or the next attempt scheduled."""
    callback = ApprovalCallback.objects.select_for_update(of=("self",)).select_related("request__workflow").get(
        pk=attempt.callback_id)
    if callback.state != ApprovalCallback.State.PENDING or callback.attempts != attempt.number:
        return "superseded"  # its lease ran out and a later attempt took over
    now = clock.now()
    callback.last_status, callback.last_error = result.status, result.error[:2000]
    data = {"callback": callback.pk, "destination": destination(callback.url), "attempts": callback.attempts,
            "status": result.status}
    if result.ok:
        callback.state, callback.finished_at, callback.next_attempt_at = ApprovalCallback.State.DELIVERED, now, None
        audit.record(ACTOR, "approval.callback_delivered", callback.request, data=data)
        outcome = "delivered"
    elif result.retryable and callback.attempts < MAX_ATTEMPTS:
        pause = _backoff(callback.attempts)
        callback.next_attempt_at = now + timedelta(seconds=pause)
        transaction.on_commit(partial(publish, TASK, (callback.pk,), countdown=pause))
        outcome = "retrying"
    else:
        callback.state, callback.finished_at, callback.next_attempt_at = ApprovalCallback.State.FAILED, now, None
        audit.record(ACTOR, "approval.callback_failed", callback.request, data=data, reason=result.error)
        outcome = "failed"
    callback.save(update_fields=["state", "finished_at", "next_attempt_at", "last_status", "last_error"])
    return outcome


def attempt_delivery(callback_id: int) -> str:
    """One delivery attempt: `delivered`, `retrying` (the next one is published), `failed`, or why
    nothing was sent (`done`, `not_closed`, `not_due`, `superseded`). Safe to run twice."""
    attempt = _begin(callback_id)
    if isinstance(attempt, str):
        return attempt
    result = _post(attempt)
    if not result.ok:
        logger.info("callback %s attempt %s to %s: %s", callback_id, attempt.number, destination(attempt.url),
                    result.error)
    return _finish(attempt, result)


def resend_due(limit: int = 100) -> int:
    """Publish callbacks whose message was lost: closed requests, pending callbacks, attempt due."""
    due = (ApprovalCallback.objects.filter(state=ApprovalCallback.State.PENDING)
           .exclude(request__state=ApprovalRequest.State.PENDING)
           .filter(Q(next_attempt_at__isnull=True) | Q(next_attempt_at__lte=clock.now()))
           .values_list("pk", flat=True)[:limit])
    ids = list(due)
    for callback_id in ids:
        publish(TASK, (callback_id,))
    return len(ids)


