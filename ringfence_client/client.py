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

import json
import os
import random
import socket
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from http.client import HTTPException
from typing import Any, Literal

from ringfence_client.guard import guarded
from ringfence_client.types import (
    CLAIM_REFUSALS,
    JSON,
    RETRYABLE_STATUSES,
    USER_AGENT,
    Action,
    ApiError,
    Approval,
    DecisionTimeout,
    DispatchResult,
    Execution,
    FieldProblem,
    NotExecuted,
    ProposalResult,
    Route,
    SignalsResult,
    TransportError,
    Workflow,
    _new_key,
)


@dataclass
class Response:
    status: int
    body: Any
    headers: Mapping[str, str]


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
        body: JSON = {"workflow": workflow, "action": action, "parameters": dict(parameters or {}),
                      "evidence": dict(evidence or {})}
        if confidence is not None:
            body["confidence"] = confidence
        if callback_url is not None:
            body["callback_url"] = callback_url
        response = self._call("POST", "/dispatch", body=body, idempotency_key=idempotency_key or _new_key())
        return DispatchResult.from_json(response.body, replayed=response.headers.get("Idempotent-Replayed") == "true")

    def approval(self, approval_id: int, *, wait: float = 0) -> Approval:
        """The request's state now, or within `wait` seconds if it closes (server-capped long-poll)."""
        query = {"wait": f"{wait:g}"} if wait else None
        timeout = self.timeout + wait
        response = self._call("GET", f"/approvals/{int(approval_id)}", query=query, timeout=timeout)
        return Approval.from_json(response.body)

    def wait_for_decision(self, approval_id: int, *, timeout: float = 600.0, poll: float = 25.0) -> Approval:
        """Long-poll until the request closes; raises DecisionTimeout after `timeout` seconds."""
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            approval = self.approval(approval_id, wait=max(0.0, min(poll, remaining)))
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
        try:
            response = self._call("POST", f"/approvals/{int(approval_id)}/execute",
                                  idempotency_key=idempotency_key or _new_key())
        except ApiError as error:
            if error.status == 409 and error.code in CLAIM_REFUSALS:
                raise NotExecuted(error, int(approval_id)) from None
            raise
        return Execution.from_json(response.body["execution"])

    def report_outcome(self, execution_id: int, status: Literal["succeeded", "failed"], detail: str = "", *,
                       idempotency_key: str | None = None) -> Execution:
        """Say what happened to an execution, once. The same report again answers as the first
        did; a different one raises ApiError 409 `outcome_reported`."""
        body: JSON = {"status": status, "detail": detail}
        return Execution.from_json(self._call("POST", f"/executions/{int(execution_id)}/outcome", body=body,
                                              idempotency_key=idempotency_key or _new_key()).body)

    def cancel(self, approval_id: int, reason: str, *, idempotency_key: str | None = None) -> Approval:
        """Withdraw a pending request this token asked for; ApiError 409 `not_pending` once decided."""
        return Approval.from_json(self._call("POST", f"/approvals/{int(approval_id)}/cancel", body={"reason": reason},
                                             idempotency_key=idempotency_key or _new_key()).body)

    def workflows(self) -> list[Workflow]:
        """The workflows this token may ask for: tier in force now, business hours, paused or not."""
        return [Workflow.from_json(w) for w in self._call("GET", "/workflows").body]

    def actions(self, workflow: str) -> list[Action]:
        """The actions declared for a workflow, with their risk, quorum and rules."""
        path = f"/workflows/{urllib.parse.quote(workflow, safe='')}/actions"
        return [Action.from_json(a) for a in self._call("GET", path).body]

    def send_signals(self, workflow: str, samples: Iterable[Mapping[str, Any]], *,
                     plan: int | None = None) -> SignalsResult:
        """Post a batch of metric samples (at most 10,000): each has `metric`, `value`,
        `observed_at` (an aware datetime or ISO-8601 string), optional `segment` ("kind:value")
        and `ring`. Safe to retry: samples already stored (same metric, time, segment) are skipped.
        """
        body: JSON = {"workflow": workflow, "samples": [_sample(s) for s in samples]}
        if plan is not None:
            body["plan"] = plan
        return SignalsResult.from_json(self._call("POST", "/signals", body=body, idempotency_key=_new_key()).body)

    def propose(self, workflow: str, kind: Literal["rollback", "fallback"], *, confidence: float, reason: str,
                evidence: Mapping[str, Any] | None = None, metric: str | None = None, plan: int | None = None,
                idempotency_key: str | None = None) -> ProposalResult:
        """Propose a rollback or fallback of the workflow's live rollout; handled per autonomy tier
        (tier 1 executes, tier 2 opens an override window, tier 3 waits for an approval)."""
        body: JSON = {"workflow": workflow, "kind": kind, "confidence": confidence, "reason": reason,
                      "evidence": dict(evidence or {})}
        if metric is not None:
            body["metric"] = metric
        if plan is not None:
            body["plan"] = plan
        response = self._call("POST", "/proposals", body=body, idempotency_key=idempotency_key or _new_key())
        return ProposalResult.from_json(response.body)

    def route(self, workflow: str, segment_kind: str, segment_value: str, *, key: str = "") -> Route:
        """Which version and mode serve a segment now (read it on every call: a rollback or
        fallback takes effect on the next one). `key` (a user or account id) applies the ring's
        exposure percent by a stable hash."""
        params = {"workflow": workflow, "segment_kind": segment_kind, "segment_value": segment_value}
        if key:
            params["key"] = key
        return Route.from_json(self._call("GET", "/route", query=params).body)

    def add_context_tag(self, workflow: str, kind: str, *, ends_at: datetime | str, reason: str,
                        metric: str | None = None, expected_change_percent: float | None = None,
                        starts_at: datetime | str | None = None, plan: int | None = None,
                        idempotency_key: str | None = None) -> JSON:
        """Tell Ringfence what a deployment is expected to change during a window, e.g.
        kind="expected_latency_increase", metric="latency_p95_ms", expected_change_percent=15."""
        body: JSON = {"workflow": workflow, "kind": kind, "ends_at": _time(ends_at), "reason": reason}
        optional = {"metric": metric, "expected_change_percent": expected_change_percent,
                    "starts_at": _time(starts_at) if starts_at is not None else None, "plan": plan}
        body.update({k: v for k, v in optional.items() if v is not None})
        return self._call("POST", "/context-tags", body=body, idempotency_key=idempotency_key or _new_key()).body

    def pause(self, workflow: str, reason: str, *, idempotency_key: str | None = None) -> JSON:
        """Engage the workflow's kill switch: every dispatch is denied until a person resumes it."""
        return self._call("POST", f"/workflows/{urllib.parse.quote(workflow, safe='')}/pause", body={"reason": reason},
                          idempotency_key=idempotency_key or _new_key()).body

    def guard(self, workflow: str, action: str, **options: Any) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
        """Decorator: run the function only under an execution Ringfence grants, and report its
        outcome (see `ringfence_client.guarded`)."""
        return guarded(self, workflow, action, **options)

    # -- transport ---------------------------------------------------------------------------

    def _call(self, method: str, path: str, *, body: JSON | None = None, query: Mapping[str, Any] | None = None,
              idempotency_key: str | None = None, timeout: float | None = None) -> Response:
        url = self.base_url + self.api_prefix + path
        if query:
            url += "?" + urllib.parse.urlencode(query)
        headers = {"Authorization": f"Bearer {self.token}", "Accept": "application/json", "User-Agent": USER_AGENT}
        data = None
        if body is not None:
            data = json.dumps(body, allow_nan=False).encode("utf-8")
            headers["Content-Type"] = "application/json"
        if idempotency_key:
            headers["Idempotency-Key"] = idempotency_key
        # Only calls that are safe to repeat are retried: reads, and writes carrying a key.
        retryable = method == "GET" or bool(idempotency_key)
        attempt = 0
        while True:
            try:
                return self._send(urllib.request.Request(url, data=data, headers=headers, method=method),
                                  timeout or self.timeout)
            except ApiError as error:
                in_flight = error.status == 409 and error.code == "request_in_flight"
                transient = error.status in RETRYABLE_STATUSES or in_flight
                if not retryable or attempt >= self.max_retries or not transient:
                    raise
                self._sleep(self._delay(attempt, error.retry_after))
            except TransportError:
                if not retryable or attempt >= self.max_retries:
                    raise
                self._sleep(self._delay(attempt, None))
            attempt += 1

    def _delay(self, attempt: int, retry_after: float | None) -> float:
        if retry_after is not None:
            return min(retry_after, self.max_backoff * 4)
        return min(self.max_backoff, self.backoff * 2**attempt) * random.uniform(0.5, 1.0)

    def _send(self, request: urllib.request.Request, timeout: float) -> Response:
        try:
            with urllib.request.urlopen(request, timeout=timeout) as raw:
                return Response(raw.status, _json(raw.read()), dict(raw.headers.items()))
        except urllib.error.HTTPError as error:
            with error:
                payload = _json(error.read())
            raise _api_error(error.code, payload, error.headers) from None
        except (urllib.error.URLError, HTTPException, ConnectionError, socket.timeout, TimeoutError) as error:
            raise TransportError(f"{request.get_method()} {request.full_url}: {error}") from error


def _time(value: datetime | str) -> str:
    if isinstance(value, datetime):
        if value.tzinfo is None:
            raise ValueError("times sent to Ringfence need a time zone")
        return value.isoformat()
    return value


def _sample(sample: Mapping[str, Any]) -> JSON:
    out = dict(sample)
    if "observed_at" in out:
        out["observed_at"] = _time(out["observed_at"])
    return out


def _json(raw: bytes) -> Any:
    if not raw:
        return None
    try:
        return json.loads(raw)
    except ValueError:
        return {"detail": raw[:500].decode("utf-8", "replace")}


def _api_error(status: int, payload: Any, headers: Any) -> ApiError:
    problem = payload if isinstance(payload, dict) else {}
    retry_after = None
    if headers is not None and headers.get("Retry-After", "").strip().isdigit():
        retry_after = float(headers["Retry-After"])
    errors = [
        FieldProblem(location=str(e.get("in", "")), field=str(e.get("field", "")), message=str(e.get("message", "")),
                     type=str(e.get("type", "")))
        for e in problem.get("errors", []) if isinstance(e, dict)
    ]
    return ApiError(status, str(problem.get("code", "error")), str(problem.get("title", "")),
                    str(problem.get("detail", "")), errors, retry_after)
