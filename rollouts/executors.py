"""Rollback and fallback executors: the I/O at the edge.

`flag` has no I/O: the effect is the plan's state, which the route API reads on the agent's next
call. `webhook` POSTs the action to the plan's URL signed with ROLLOUT_WEBHOOK_SECRET (core.signing,
the scheme the notification webhook uses) and an Idempotency-Key header (the same key on every
attempt, so the receiver applies the effect once), through core.outbound: a target Ringfence does not
send to (loopback, private, link-local, … outside WEBHOOK_ALLOWED_NETWORKS) fails the attempt with the
reason, a redirect is not followed, and of the answer only its status and timing are recorded, never
its body (the plan page shows attempts to everyone who may view the plan).

`run(action_id)` is one attempt: execution.begin_attempt (lease, attempt row), the executor,
execution.record_action_attempt (result, effect, next attempt). The Celery task retries.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from django.conf import settings

from core import outbound, signing
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


def webhook_headers(idempotency_key: str, body: bytes) -> dict[str, str]:
    return {
        "Content-Type": "application/json",
        "User-Agent": "Ringfence-rollouts/1",
        IDEMPOTENCY_HEADER: idempotency_key,
        **signing.sign(settings.ROLLOUT_WEBHOOK_SECRET, body),
    }


def call_webhook(ticket: execution.Ticket) -> Outcome:
    body = body_of(ticket.payload)
    timeout = settings.ROLLOUT_WEBHOOK_TIMEOUT_SECONDS
    try:
        answer = outbound.post(ticket.webhook_url, body, webhook_headers(ticket.idempotency_key, body),
                               timeout=timeout)
    except outbound.Refused as refusal:  # sending again would be refused again: the plan's URL must change
        return Outcome(ActionAttempt.Outcome.FAILED, None, str(refusal))
    except TimeoutError:
        return Outcome(ActionAttempt.Outcome.RETRYABLE_ERROR, None, f"no answer within {timeout} s")
    except OSError as exc:
        return Outcome(ActionAttempt.Outcome.RETRYABLE_ERROR, None, f"connection failed: {exc.strerror or exc}")
    status = answer.status
    if 200 <= status < 300:
        return Outcome(ActionAttempt.Outcome.OK, status, f"HTTP {status} in {answer.elapsed_ms} ms")
    if 300 <= status < 400:
        return Outcome(ActionAttempt.Outcome.FAILED, status, f"HTTP {status}: redirects are not followed")
    retryable = status >= 500 or status in RETRYABLE_STATUS
    return Outcome(ActionAttempt.Outcome.RETRYABLE_ERROR if retryable else ActionAttempt.Outcome.FAILED,
                   status, f"HTTP {status} in {answer.elapsed_ms} ms")


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
