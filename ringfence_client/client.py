"""A small, typed client for the Ringfence agent API; standard library only (urllib).

    from ringfence_client import RingfenceClient

    rf = RingfenceClient("https://ringfence.example.com", token="rf_…")
    answer = rf.dispatch("refund-agent", "refund_customer", parameters={"order": "A-1001"})
    if answer.decision == "pending":
        approval = rf.wait_for_decision(answer.approval_id, timeout=600)
        execution = rf.execute(approval.id) if approval.outcome == "allow" else None   # claim it, once
    else:
        execution = answer.execution                 # an allow grants one; a deny none
    if execution:
        ...                                          # act, then say what happened:
        rf.report_outcome(execution.id, "succeeded")

Every call that changes something carries an Idempotency-Key; retries (connection failures,
429, 503, a 409 while the first attempt is still in flight) reuse the same key, so the server
acts at most once however often the call is retried.
"""

from __future__ import annotations

import os
import socket
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Mapping
from datetime import datetime
from http.client import HTTPException
from typing import Any, Literal, TypeVar

from ringfence_client import protocol
from ringfence_client.guard import guarded
from ringfence_client.protocol import Call, Response
from ringfence_client.types import (
    JSON,
    Action,
    ApiError,
    Approval,
    DecisionTimeout,
    DispatchResult,
    Execution,
    ProposalResult,
    RingfenceError,
    Route,
    SignalsResult,
    TransportError,
    Workflow,
)

T = TypeVar("T")
__all__ = ["RingfenceClient", "Response"]


class RingfenceClient:
    """One API base URL and one service-account token.

    `max_retries` bounds how often one call is retried; waits grow exponentially from `backoff`
    seconds (with jitter, at most `max_backoff`) unless the server sends `Retry-After`.
    """

    def __init__(self, base_url: str, token: str, *, timeout: float = 30.0, max_retries: int = 4,
                 backoff: float = 0.25, max_backoff: float = 8.0, api_prefix: str = "/api/v1") -> None:
        if not token:
            raise ValueError("a Ringfence API token is required")
        self.base_url = base_url.rstrip("/")
        self.api_prefix = api_prefix
        self.token = token
        self.timeout = timeout
        self.max_retries = max_retries
        self.backoff = backoff
        self.max_backoff = max_backoff
        self._sleep: Callable[[float], None] = time.sleep

    @classmethod
    def from_env(cls, **options: Any) -> RingfenceClient:
        """From RINGFENCE_URL and RINGFENCE_TOKEN."""
        return cls(os.environ["RINGFENCE_URL"], os.environ["RINGFENCE_TOKEN"], **options)

    # -- endpoints ---------------------------------------------------------------------------

    def dispatch(self, workflow: str, action: str, parameters: Mapping[str, Any] | None = None, *,
                 evidence: Mapping[str, Any] | None = None, confidence: float | None = None,
                 idempotency_key: str | None = None, callback_url: str | None = None) -> DispatchResult:
        """Ask whether `action` may run now: allow, deny, or pending with an approval to wait for.

        Pass the same `idempotency_key` only when asking again for the same intent (the same job
        or ticket, e.g. after a restart) to get the same answer and the same approval request; an
        allow answered again carries the same execution, which the first run may have used.

        With `callback_url` (http or https), a pending request's outcome is also POSTed there when
        it closes, signed with this client's token: check it with
        `ringfence_client.callbacks.verify_callback(token, headers, body)` instead of waiting.
        """
        return self._call(protocol.dispatch(workflow, action, parameters, evidence=evidence, confidence=confidence,
                                            idempotency_key=idempotency_key, callback_url=callback_url))

    def approval(self, approval_id: int, *, wait: float = 0) -> Approval:
        """The request's state now, or within `wait` seconds if it closes (server-capped long-poll)."""
        return self._call(protocol.approval(approval_id, wait=wait))

    def wait_for_decision(self, approval_id: int, *, timeout: float = 600.0, poll: float = 25.0) -> Approval:
        """Long-poll until the request closes; raises DecisionTimeout after `timeout` seconds."""
        deadline = time.monotonic() + timeout
        while True:
            approval = self.approval(approval_id, wait=protocol.next_wait(deadline - time.monotonic(), poll))
            if not approval.is_pending:
                return approval
            if deadline - time.monotonic() <= 0:
                raise DecisionTimeout(approval)

    def execute(self, approval_id: int, *, idempotency_key: str | None = None) -> Execution:
        """Claim the one execution an approved request grants; call it right before acting.

        Raises NotExecuted when there is nothing to run: already claimed (`already_executed`),
        not claimed in time (`approval_expired`), the workflow is paused (`paused`) or the request
        was not approved (`not_approved`). A retry of this call (same key) gets the same execution.
        """
        return self._call(protocol.execute(approval_id, idempotency_key=idempotency_key))

    def report_outcome(self, execution_id: int, status: Literal["succeeded", "failed"], detail: str = "", *,
                       idempotency_key: str | None = None) -> Execution:
        """Say what happened to an execution, once. The same report again answers as the first
        did; a different one raises ApiError 409 `outcome_reported`."""
        return self._call(protocol.report_outcome(execution_id, status, detail, idempotency_key=idempotency_key))

    def cancel(self, approval_id: int, reason: str, *, idempotency_key: str | None = None) -> Approval:
        """Withdraw a pending request this token asked for; ApiError 409 `not_pending` once decided."""
        return self._call(protocol.cancel(approval_id, reason, idempotency_key=idempotency_key))

    def workflows(self) -> list[Workflow]:
        """The workflows this token may ask for: tier in force now, business hours, paused or not."""
        return self._call(protocol.workflows())

    def actions(self, workflow: str) -> list[Action]:
        """The actions declared for a workflow, with their risk, quorum and rules."""
        return self._call(protocol.actions(workflow))

    def send_signals(self, workflow: str, samples: Iterable[Mapping[str, Any]], *,
                     plan: int | None = None) -> SignalsResult:
        """Post a batch of metric samples (at most 10,000): each has `metric`, `value`,
        `observed_at` (an aware datetime or ISO-8601 string), optional `segment` ("kind:value")
        and `ring`. Safe to retry: samples already stored (same metric, time, segment) are skipped.
        """
        return self._call(protocol.send_signals(workflow, samples, plan=plan))

    def propose(self, workflow: str, kind: Literal["rollback", "fallback"], *, confidence: float, reason: str,
                evidence: Mapping[str, Any] | None = None, metric: str | None = None, plan: int | None = None,
                idempotency_key: str | None = None) -> ProposalResult:
        """Propose a rollback or fallback of the workflow's live rollout; handled per autonomy tier
        (tier 1 executes, tier 2 opens an override window, tier 3 waits for an approval)."""
        return self._call(protocol.propose(workflow, kind, confidence=confidence, reason=reason, evidence=evidence,
                                           metric=metric, plan=plan, idempotency_key=idempotency_key))

    def route(self, workflow: str, segment_kind: str, segment_value: str, *, key: str = "") -> Route:
        """Which version and mode serve a segment now (read it on every call: a rollback or
        fallback takes effect on the next one). `key` (a user or account id) applies the ring's
        exposure percent by a stable hash."""
        return self._call(protocol.route(workflow, segment_kind, segment_value, key=key))

    def add_context_tag(self, workflow: str, kind: str, *, ends_at: datetime | str, reason: str,
                        metric: str | None = None, expected_change_percent: float | None = None,
                        starts_at: datetime | str | None = None, plan: int | None = None,
                        idempotency_key: str | None = None) -> JSON:
        """Tell Ringfence what a deployment is expected to change during a window, e.g.
        kind="expected_latency_increase", metric="latency_p95_ms", expected_change_percent=15."""
        return self._call(protocol.add_context_tag(
            workflow, kind, ends_at=ends_at, reason=reason, metric=metric,
            expected_change_percent=expected_change_percent, starts_at=starts_at, plan=plan,
            idempotency_key=idempotency_key))

    def pause(self, workflow: str, reason: str, *, idempotency_key: str | None = None) -> JSON:
        """Engage the workflow's kill switch: every dispatch is denied until a person resumes it."""
        return self._call(protocol.pause(workflow, reason, idempotency_key=idempotency_key))

    def guard(self, workflow: str, action: str, **options: Any) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
        """Decorator: run the function only under an execution Ringfence grants, and report its
        outcome (see `ringfence_client.guarded`). An `async def` function stays one: the calls to
        Ringfence then run in a worker thread (`AsyncRingfenceClient.guard` makes them natively)."""
        return guarded(self, workflow, action, **options)

    # -- transport ---------------------------------------------------------------------------

    def _call(self, call: Call[T]) -> T:
        url = call.url(self.base_url, self.api_prefix)
        request = urllib.request.Request(url, data=call.content(), headers=call.headers(self.token),
                                         method=call.method)
        attempt = 0
        while True:
            try:
                return call.read(self._send(request, self.timeout + call.wait))
            except (ApiError, TransportError) as error:
                delay = self._retry_delay(call, error, attempt)
                if delay is None:
                    if isinstance(error, ApiError):
                        raise call.refused(error) from None
                    raise
                self._sleep(delay)
            attempt += 1

    def _retry_delay(self, call: Call[Any], error: RingfenceError, attempt: int) -> float | None:
        return protocol.retry_delay(call, error, attempt, max_retries=self.max_retries, backoff=self.backoff,
                                    max_backoff=self.max_backoff)

    def _send(self, request: urllib.request.Request, timeout: float) -> Response:
        try:
            with urllib.request.urlopen(request, timeout=timeout) as raw:
                headers = {name.lower(): value for name, value in raw.headers.items()}
                return Response(raw.status, protocol.decode(raw.read()), headers)
        except urllib.error.HTTPError as error:
            with error:
                payload = protocol.decode(error.read())
            raise protocol.api_error(error.code, payload, error.headers) from None
        except (urllib.error.URLError, HTTPException, ConnectionError, socket.timeout, TimeoutError) as error:
            raise TransportError(f"{request.get_method()} {request.full_url}: {error}") from error
