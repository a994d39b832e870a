"""Rollback and fallback executors: the I/O at the edge.

`flag` has no I/O: the effect is the plan's state, which the route API reads on the agent's next
call. `webhook` POSTs the action to the plan's URL signed with ROLLOUT_WEBHOOK_SECRET (core.signing,
the scheme the notification webhook uses) and an Idempotency-Key header (the same key on every
attempt, so the receiver applies the effect once).

`run(action_id)` is one attempt: execution.begin_attempt (lease, attempt row), the executor,
execution.record_action_attempt (result, effect, next attempt). The Celery task retries.
"""

from __future__ import annotations

import json
import socket
import urllib.error
import urllib.request
from dataclasses import dataclass

from django.conf import settings

from core import signing
from rollouts import execution
from rollouts.models import ActionAttempt

IDEMPOTENCY_HEADER = "Idempotency-Key"
# 408 timeout, 409 the same key still in flight at the receiver, 425 too early, 429 throttled.
RETRYABLE_STATUS = {408, 409, 425, 429}


@dataclass(frozen=True)
class Outcome:
    outcome: str
    http_status: int | None = None
    detail: str = ""


def body_of(payload: dict) -> bytes:
    return json.dumps(payload, sort_keys=True, separators=(",", ":")).encode()


def webhook_request(url: str, idempotency_key: str, payload: dict) -> urllib.request.Request:
    body = body_of(payload)
    return urllib.request.Request(url, data=body, method="POST", headers={
        "Content-Type": "application/json",
        "User-Agent": "Ringfence-rollouts/1",
        IDEMPOTENCY_HEADER: idempotency_key,
        **signing.sign(settings.ROLLOUT_WEBHOOK_SECRET, body),
    })


def call_webhook(ticket: execution.Ticket) -> Outcome:
    request = webhook_request(ticket.webhook_url, ticket.idempotency_key, ticket.payload)
    try:
        with urllib.request.urlopen(request, timeout=settings.ROLLOUT_WEBHOOK_TIMEOUT_SECONDS) as response:
            return Outcome(ActionAttempt.Outcome.OK, response.status, _snippet(response.read(2000)))
    except urllib.error.HTTPError as exc:
        status = exc.code
        retryable = status >= 500 or status in RETRYABLE_STATUS
        detail = f"HTTP {status}: {_snippet(exc.read(2000))}"
        return Outcome(ActionAttempt.Outcome.RETRYABLE_ERROR if retryable else ActionAttempt.Outcome.FAILED,
                       status, detail)
    except (TimeoutError, socket.timeout):
        return Outcome(ActionAttempt.Outcome.RETRYABLE_ERROR, None,
                       f"no answer within {settings.ROLLOUT_WEBHOOK_TIMEOUT_SECONDS} s")
    except (urllib.error.URLError, OSError) as exc:
        return Outcome(ActionAttempt.Outcome.RETRYABLE_ERROR, None, f"connection failed: {getattr(exc, 'reason', exc)}")


def _snippet(raw: bytes) -> str:
    return raw.decode("utf-8", "replace").strip()[:500]


EXECUTORS = {
    "flag": lambda ticket: Outcome(ActionAttempt.Outcome.OK, None, "route flag flipped"),
    "webhook": call_webhook,
}


def run(action_id: int, *, worker: str = "") -> execution.AttemptResult | None:
    """One attempt. None when there was nothing to do (finished, leased elsewhere, backing off)."""
    ticket = execution.begin_attempt(action_id, worker=worker)
    if ticket is None:
        return None
    executor = EXECUTORS.get(ticket.executor)
    try:
        outcome = executor(ticket) if executor else Outcome(ActionAttempt.Outcome.FAILED, None,
                                                            f"unknown executor {ticket.executor!r}")
    except Exception as exc:  # an executor bug is recorded as a failed attempt, then retried
        outcome = Outcome(ActionAttempt.Outcome.RETRYABLE_ERROR, None, f"{type(exc).__name__}: {exc}")
    return execution.record_action_attempt(ticket.attempt_id, outcome=outcome.outcome,
                                           http_status=outcome.http_status, detail=outcome.detail)
