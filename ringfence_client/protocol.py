"""What the sync and async clients share, with no I/O: how each call is written, how answers and
refusals are read, and when and after how long a call is retried.

A `Call` says everything about one API call (method, path, body, query, Idempotency-Key, how to
read the answer); `RingfenceClient` sends it with urllib, `AsyncRingfenceClient` with httpx, and
both retry it by `retry_delay`, so the two cannot drift apart on the rules that make a retried
call act at most once.
"""

from __future__ import annotations

import json
import random
import urllib.parse
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Generic, Literal, TypeVar

from ringfence_client.types import (
    CLAIM_REFUSALS,
    JSON,
    RETRYABLE_STATUSES,
    USER_AGENT,
    Action,
    ApiError,
    Approval,
    DispatchResult,
    Execution,
    FieldProblem,
    NotExecuted,
    ProposalResult,
    RingfenceError,
    Route,
    SignalsResult,
    TransportError,
    Workflow,
    _new_key,
)

T = TypeVar("T")
# The longest `wait` the API accepts on GET /approvals/{id} (a longer one is a 422): each poll is capped here.
MAX_WAIT_SECONDS = 60.0


@dataclass
class Response:
    """An answer in the 2xx range; `headers` has lower-case names."""

    status: int
    body: Any
    headers: Mapping[str, str]

    def header(self, name: str) -> str | None:
        return self.headers.get(name.lower())


@dataclass(frozen=True)
class Call(Generic[T]):
    """One API call, ready to send, and how to read its answer."""

    method: Literal["GET", "POST"]
    path: str
    read: Callable[[Response], T]
    body: JSON | None = None
    query: Mapping[str, str] | None = None
    idempotency_key: str | None = None
    wait: float = 0.0  # seconds the server may hold the answer (long-poll), added to the client's timeout
    claim_of: int | None = None  # the approval whose execution this call claims

    @property
    def retryable(self) -> bool:
        """Only calls that are safe to repeat are retried: reads, and writes carrying a key."""
        return self.method == "GET" or bool(self.idempotency_key)

    def url(self, base_url: str, api_prefix: str) -> str:
        url = base_url + api_prefix + self.path
        return url + "?" + urllib.parse.urlencode(self.query) if self.query else url

    def headers(self, token: str) -> dict[str, str]:
        headers = {"Authorization": f"Bearer {token}", "Accept": "application/json", "User-Agent": USER_AGENT}
        if self.body is not None:
            headers["Content-Type"] = "application/json"
        if self.idempotency_key:
            headers["Idempotency-Key"] = self.idempotency_key
        return headers

    def content(self) -> bytes | None:
        return None if self.body is None else json.dumps(self.body, allow_nan=False).encode("utf-8")

    def refused(self, error: ApiError) -> ApiError:
        """The error to raise for a refusal: a refused claim is `NotExecuted`."""
        if self.claim_of is not None and error.status == 409 and error.code in CLAIM_REFUSALS:
            return NotExecuted(error, self.claim_of)
        return error


def retry_delay(call: Call[Any], error: RingfenceError, attempt: int, *, max_retries: int, backoff: float,
                max_backoff: float) -> float | None:
    """Seconds to wait before attempt `attempt + 1` of `call` after `error`, or None: raise it.

    Retried with the same Idempotency-Key: connection failures, 429, 502, 503, 504, and a 409
    `request_in_flight` (the first attempt is still running). `Retry-After` is honoured in full: when it
    asks for more than four times `max_backoff`, the error is raised at once (its `retry_after` says
    when to come back) rather than retried early into the same refusal. Otherwise waits grow
    exponentially from `backoff`, with jitter.
    """
    if not call.retryable or attempt >= max_retries:
        return None
    retry_after = None
    if isinstance(error, ApiError):
        in_flight = error.status == 409 and error.code == "request_in_flight"
        if error.status not in RETRYABLE_STATUSES and not in_flight:
            return None
        retry_after = error.retry_after
    elif not isinstance(error, TransportError):
        return None
    if retry_after is not None:
        return retry_after if retry_after <= max_backoff * 4 else None
    return min(max_backoff, backoff * 2**attempt) * random.uniform(0.5, 1.0)


def next_wait(remaining: float, poll: float) -> float:
    """How long the next long-poll of `wait_for_decision` asks the server to hold the answer (at most
    MAX_WAIT_SECONDS: a longer `poll` just polls more than once)."""
    return max(0.0, min(poll, remaining, MAX_WAIT_SECONDS))


def decode(raw: bytes) -> Any:
    if not raw:
        return None
    try:
        return json.loads(raw)
    except ValueError:
        return {"detail": raw[:500].decode("utf-8", "replace")}


def api_error(status: int, payload: Any, headers: Any) -> ApiError:
    """An RFC 9457 problem answer as an ApiError (`headers` looked up case-insensitively)."""
    problem = payload if isinstance(payload, dict) else {}
    retry_after = None
    if headers is not None and (headers.get("Retry-After") or "").strip().isdigit():
        retry_after = float(headers["Retry-After"])
    errors = [
        FieldProblem(location=str(e.get("in", "")), field=str(e.get("field", "")), message=str(e.get("message", "")),
                     type=str(e.get("type", "")))
        for e in problem.get("errors", []) if isinstance(e, dict)
    ]
    return ApiError(status, str(problem.get("code", "error")), str(problem.get("title", "")),
                    str(problem.get("detail", "")), errors, retry_after)


# -- the calls -------------------------------------------------------------------------------------


def dispatch(workflow: str, action: str, parameters: Mapping[str, Any] | None = None, *,
             evidence: Mapping[str, Any] | None = None, confidence: float | None = None,
             idempotency_key: str | None = None, callback_url: str | None = None) -> Call[DispatchResult]:
    body: JSON = {"workflow": workflow, "action": action, "parameters": dict(parameters or {}),
                  "evidence": dict(evidence or {})}
    if confidence is not None:
        body["confidence"] = confidence
    if callback_url is not None:
        body["callback_url"] = callback_url
    return Call("POST", "/dispatch", _dispatch_result, body=body, idempotency_key=idempotency_key or _new_key())


def _dispatch_result(response: Response) -> DispatchResult:
    return DispatchResult.from_json(response.body, replayed=response.header("Idempotent-Replayed") == "true")


def approval(approval_id: int, *, wait: float = 0) -> Call[Approval]:
    wait = min(wait, MAX_WAIT_SECONDS)
    query = {"wait": f"{wait:g}"} if wait else None
    return Call("GET", f"/approvals/{int(approval_id)}", lambda r: Approval.from_json(r.body), query=query,
                wait=wait)


def execute(approval_id: int, *, idempotency_key: str | None = None) -> Call[Execution]:
    return Call("POST", f"/approvals/{int(approval_id)}/execute", lambda r: Execution.from_json(r.body["execution"]),
                idempotency_key=idempotency_key or _new_key(), claim_of=int(approval_id))


def report_outcome(execution_id: int, status: Literal["succeeded", "failed"], detail: str = "", *,
                   idempotency_key: str | None = None) -> Call[Execution]:
    return Call("POST", f"/executions/{int(execution_id)}/outcome", lambda r: Execution.from_json(r.body),
                body={"status": status, "detail": detail}, idempotency_key=idempotency_key or _new_key())


def cancel(approval_id: int, reason: str, *, idempotency_key: str | None = None) -> Call[Approval]:
    return Call("POST", f"/approvals/{int(approval_id)}/cancel", lambda r: Approval.from_json(r.body),
                body={"reason": reason}, idempotency_key=idempotency_key or _new_key())


def workflows() -> Call[list[Workflow]]:
    return Call("GET", "/workflows", lambda r: [Workflow.from_json(w) for w in r.body])


def actions(workflow: str) -> Call[list[Action]]:
    return Call("GET", f"/workflows/{urllib.parse.quote(workflow, safe='')}/actions",
                lambda r: [Action.from_json(a) for a in r.body])


def send_signals(workflow: str, samples: Iterable[Mapping[str, Any]], *,
                 plan: int | None = None) -> Call[SignalsResult]:
    body: JSON = {"workflow": workflow, "samples": [_sample(s) for s in samples]}
    if plan is not None:
        body["plan"] = plan
    return Call("POST", "/signals", lambda r: SignalsResult.from_json(r.body), body=body, idempotency_key=_new_key())


def propose(workflow: str, kind: Literal["rollback", "fallback"], *, confidence: float, reason: str,
            evidence: Mapping[str, Any] | None = None, metric: str | None = None, plan: int | None = None,
            idempotency_key: str | None = None) -> Call[ProposalResult]:
    body: JSON = {"workflow": workflow, "kind": kind, "confidence": confidence, "reason": reason,
                  "evidence": dict(evidence or {})}
    if metric is not None:
        body["metric"] = metric
    if plan is not None:
        body["plan"] = plan
    return Call("POST", "/proposals", lambda r: ProposalResult.from_json(r.body), body=body,
                idempotency_key=idempotency_key or _new_key())


def route(workflow: str, segment_kind: str, segment_value: str, *, key: str = "") -> Call[Route]:
    params = {"workflow": workflow, "segment_kind": segment_kind, "segment_value": segment_value}
    if key:
        params["key"] = key
    return Call("GET", "/route", lambda r: Route.from_json(r.body), query=params)


def add_context_tag(workflow: str, kind: str, *, ends_at: datetime | str, reason: str, metric: str | None = None,
                    expected_change_percent: float | None = None, starts_at: datetime | str | None = None,
                    plan: int | None = None, idempotency_key: str | None = None) -> Call[JSON]:
    body: JSON = {"workflow": workflow, "kind": kind, "ends_at": _time(ends_at), "reason": reason}
    optional = {"metric": metric, "expected_change_percent": expected_change_percent,
                "starts_at": _time(starts_at) if starts_at is not None else None, "plan": plan}
    body.update({k: v for k, v in optional.items() if v is not None})
    return Call("POST", "/context-tags", _body, body=body, idempotency_key=idempotency_key or _new_key())


def pause(workflow: str, reason: str, *, idempotency_key: str | None = None) -> Call[JSON]:
    return Call("POST", f"/workflows/{urllib.parse.quote(workflow, safe='')}/pause", _body, body={"reason": reason},
                idempotency_key=idempotency_key or _new_key())


def _body(response: Response) -> Any:
    return response.body


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
