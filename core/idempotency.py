"""Idempotency-Key for unsafe API calls, as the IETF httpapi Idempotency-Key draft describes.

Use it under the route decorator; the view returns a Schema (or `Status(code, Schema)`):

    @router.post("/proposals", response=ProposalOut)
    @idempotent()
    def propose(request, payload: ProposalIn): ...

- The key is scoped to the caller (service account, or person for session callers).
- Missing key where required → 400; malformed → 400 `idempotency_key_invalid`. A key is 1 to
  255 visible ASCII characters other than `"` and `,` (KEY_PATTERN, documented in OpenAPI; a
  comma is what two `Idempotency-Key` headers become), sent bare or as an RFC 8941 string
  (`"…"`): no spaces, no control or non-ASCII characters.
- First use: the key is claimed, the view runs and its answer is stored, all in the one
  transaction that makes the change: an answer is never stored without its effect, and a
  request that dies leaves no claim behind. Answers below 500 are stored (refusals too); a 5xx
  rolls the claim back so a retry can succeed once the database or broker is back.
- Same key, same body → the first answer again, with `Idempotent-Replayed: true`.
- Same key, another body (or endpoint) → 422 `idempotency_key_reused`.
- Same key while the first request is still running → the retry waits for it (at most
  IDEMPOTENCY_WAIT_SECONDS) and answers the first answer; still running then → 409
  `request_in_flight` with `Retry-After`.
- Keys are kept IDEMPOTENCY_KEY_TTL_HOURS (default 24 h); expired keys are purged as new ones
  are claimed, and an expired key may be used again.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import re
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import timedelta
from functools import wraps
from typing import Any

from django.conf import settings
from django.db import OperationalError, connection, transaction
from django.http import HttpRequest, HttpResponse
from ninja import Status
from ninja.responses import NinjaJSONEncoder
from psycopg.errors import LockNotAvailable
from pydantic import BaseModel

from core import clock
from core.db import row_of_batch
from core.models import IdempotencyKey
from core.problems import FieldError, Problem, handle_exception, problem_for, problem_response

HEADER = "Idempotency-Key"
REPLAYED_HEADER = "Idempotent-Replayed"
MAX_KEY_LENGTH = 255
# Visible ASCII but '"' and ',' (ECMA-262 and Python read it alike; OpenAPI publishes it).
KEY_PATTERN = r"^[!#-+\--~]+$"
_KEY = re.compile(KEY_PATTERN)
PURGE_EVERY_SECONDS = 60
PURGE_BATCH = 1000

# (module, function name) of idempotent views → required?; documents the header in OpenAPI.
REGISTRY: dict[tuple[str, str], bool] = {}

_purge_lock = threading.Lock()
_last_purge = 0.0


def header_value(request: HttpRequest) -> str | None:
    """The key as sent: a bare token or an RFC 8941 string ("…"); None when absent."""
    raw = request.headers.get(HEADER)
    if raw is None:
        return None
    key = raw.strip()
    if len(key) >= 2 and key[0] == key[-1] == '"':
        key = key[1:-1]
    if "," in raw:
        raise Problem(400, "idempotency_key_invalid", "Send exactly one Idempotency-Key header.",
                      errors=[FieldError(HEADER, "More than one value was sent.", "header")])
    if len(key) > MAX_KEY_LENGTH or not _KEY.fullmatch(key):
        raise Problem(400, "idempotency_key_invalid",
                      f"The Idempotency-Key must be 1 to {MAX_KEY_LENGTH} visible ASCII characters other than "
                      "'\"' and ',' (a UUID is ideal).",
                      errors=[FieldError(HEADER, "Not a usable key.", "header", "pattern")])
    return key


def fingerprint(request: HttpRequest) -> str:
    """Digest of method, path and body; JSON bodies are canonicalised (key order, spacing)."""
    body = request.body
    try:
        canonical = json.dumps(json.loads(body), sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
    except (ValueError, RecursionError):
        canonical = body
    digest = hashlib.sha256()
    for part in (request.method.encode(), request.path.encode(), canonical):
        digest.update(len(part).to_bytes(8, "big"))
        digest.update(part)
    return digest.hexdigest()


def _owner(request: HttpRequest) -> dict[str, Any]:
    account = getattr(getattr(request, "auth", None), "service_account", None)  # a token's account
    if account is not None:
        return {"service_account": account}
    return {"user": request.auth}  # type: ignore[attr-defined]


def _fresh(row: IdempotencyKey, request: HttpRequest, digest: str) -> None:
    now = clock.now()
    row.fingerprint, row.method, row.path = digest, request.method, request.path[:255]
    row.state, row.response_status, row.response_content_type, row.response_body = (
        IdempotencyKey.State.IN_FLIGHT, None, "", "")
    row.created_at, row.expires_at = now, now + timedelta(hours=settings.IDEMPOTENCY_KEY_TTL_HOURS)


def _milliseconds(seconds: float) -> str:
    return f"{max(1, int(seconds * 1000))}ms"


@contextmanager
def _waiting_at_most(seconds: float) -> Iterator[None]:
    """Within the block, waiting for another transaction's lock fails after `seconds`."""
    if connection.vendor != "postgresql":
        yield
        return
    with connection.cursor() as cursor:
        cursor.execute("SET LOCAL lock_timeout = %s", [_milliseconds(seconds)])
    yield
    with connection.cursor() as cursor:
        cursor.execute("SET LOCAL lock_timeout TO DEFAULT")


def _insert_if_absent(row: IdempotencyKey, wait_seconds: float) -> bool:
    """INSERT … ON CONFLICT DO NOTHING: waits (at most `wait_seconds`) while a concurrent first
    attempt holds the key. On PostgreSQL the wait limit is set, the row inserted and the limit
    reset in one round trip."""
    fields = [f for f in IdempotencyKey._meta.concrete_fields if not f.primary_key]
    columns = ", ".join(connection.ops.quote_name(f.column) for f in fields)
    placeholders = ", ".join(["%s"] * len(fields))
    values = [f.get_db_prep_save(getattr(row, f.attname), connection) for f in fields]
    table = connection.ops.quote_name(IdempotencyKey._meta.db_table)
    insert = f"INSERT INTO {table} ({columns}) VALUES ({placeholders}) ON CONFLICT DO NOTHING RETURNING id"
    with connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            inserted = row_of_batch(cursor, f"SET LOCAL lock_timeout = '{_milliseconds(wait_seconds)}'; {insert}; "
                                            "SET LOCAL lock_timeout TO DEFAULT", values, statement=1)
        else:
            cursor.execute(insert, values)
            inserted = cursor.fetchone()
    if inserted:
        row.pk = inserted[0]
    return inserted is not None


def claim(request: HttpRequest, key: str) -> tuple[IdempotencyKey, bool]:
    """Claim `key` inside the caller's transaction; (row, True) when its first answer is to be replayed.

    The claim is a row inserted in the same transaction as the change the request makes: a
    concurrent retry waits on it (at most IDEMPOTENCY_WAIT_SECONDS, then 409) and then sees the
    committed answer; a request that fails rolls its claim back with everything else.
    """
    owner, digest = _owner(request), fingerprint(request)
    row = IdempotencyKey(key=key, **owner)
    _fresh(row, request, digest)
    # The claim is the transaction's first statement: if the wait fails, nothing else is lost.
    try:
        if _insert_if_absent(row, settings.IDEMPOTENCY_WAIT_SECONDS):
            return row, False
        with _waiting_at_most(settings.IDEMPOTENCY_WAIT_SECONDS):
            existing = IdempotencyKey.objects.select_for_update().get(key=key, **owner)
    except OperationalError as exc:
        if not isinstance(exc.__cause__, LockNotAvailable):
            raise
        raise Problem(409, "request_in_flight",
                      "A request with this Idempotency-Key is still being processed; retry shortly.",
                      headers={"Retry-After": "1"}) from None
    if existing.expires_at <= clock.now():
        _fresh(existing, request, digest)
        existing.save()
        return existing, False
    if existing.fingerprint != digest:
        raise Problem(422, "idempotency_key_reused",
                      "This Idempotency-Key was already used for a different request; use a new key.",
                      errors=[FieldError(HEADER, "Used before with another body or endpoint.", "header")])
    return existing, True


def replay(row: IdempotencyKey) -> HttpResponse:
    response = HttpResponse(row.response_body, status=row.response_status, content_type=row.response_content_type)
    response[REPLAYED_HEADER] = "true"
    return response


def _complete(row: IdempotencyKey, response: HttpResponse) -> None:
    IdempotencyKey.objects.filter(pk=row.pk).update(
        state=IdempotencyKey.State.COMPLETED, response_status=response.status_code,
        response_content_type=response.get("Content-Type", ""), response_body=response.content.decode("utf-8"),
    )


def render(result: Any) -> HttpResponse:
    """A view's result (Schema, dict or Status) as the JSON response the caller receives."""
    if isinstance(result, HttpResponse):
        return result
    status = 200
    if isinstance(result, Status):
        status, result = result.status_code, result.value
    if isinstance(result, BaseModel):
        result = result.model_dump(mode="json")
    body = json.dumps(result, cls=NinjaJSONEncoder, allow_nan=False)
    return HttpResponse(body, status=status, content_type="application/json; charset=utf-8")


def purge_expired() -> int:
    """Delete a batch of expired keys; at most once a minute per process."""
    global _last_purge
    with _purge_lock:
        if time.monotonic() - _last_purge < PURGE_EVERY_SECONDS:
            return 0
        _last_purge = time.monotonic()
    ids = list(IdempotencyKey.objects.filter(expires_at__lte=clock.now()).values_list("pk", flat=True)[:PURGE_BATCH])
    return IdempotencyKey.objects.filter(pk__in=ids).delete()[0] if ids else 0


class _Failed(Exception):
    def __init__(self, response: HttpResponse) -> None:
        self.response = response


def run_once(request: HttpRequest, key: str, call: Callable[[], Any]) -> HttpResponse:
    """Run `call` at most once per key: claim, run and store the answer in one transaction, or replay."""
    purge_expired()
    try:
        with transaction.atomic():
            row, replaying = claim(request, key)
            if replaying:
                return replay(row)
            try:
                with transaction.atomic():
                    response = render(call())
            except Exception as exc:
                response = problem_response(request, problem_for(exc))
            if response.status_code >= 500:
                raise _Failed(response)  # roll back the claim with the rest: a retry may succeed
            _complete(row, response)
    except _Failed as failed:
        return failed.response
    except Exception as exc:
        # Also after the commit (e.g. the broker refused a message): the stored answer stands for retries.
        return handle_exception(request, exc)
    return response


def idempotent(*, required: bool = True) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Make a POST view idempotent per caller and Idempotency-Key (see the module docstring)."""

    def decorator(view: Callable[..., Any]) -> Callable[..., Any]:
        REGISTRY[(view.__module__, view.__name__)] = required

        @wraps(view)
        def wrapper(request: HttpRequest, *args: Any, **kwargs: Any) -> Any:
            key = header_value(request)
            if key is None:
                if required:
                    raise Problem(400, "idempotency_key_missing",
                                  "Send an Idempotency-Key header "
                                  "(a fresh UUID per intended action; reuse it on retries).",
                                  errors=[FieldError(HEADER, "This header is required.", "header")])
                return view(request, *args, **kwargs)
            return run_once(request, key, lambda: view(request, *args, **kwargs))

        # ninja resolves string annotations in the wrapper's module: hand it the resolved ones.
        wrapper.__signature__ = inspect.signature(view, eval_str=True)  # type: ignore[attr-defined]
        return wrapper

    return decorator
