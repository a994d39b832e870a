"""The Ringfence agent API for asyncio agents, on httpx (`pip install ringfence[async]`).

    from ringfence_client import AsyncRingfenceClient

    async with AsyncRingfenceClient("https://ringfence.example.com", token="rf_…") as rf:
        answer = await rf.dispatch("refund-agent", "refund_customer", {"order": "A-1001"})
        if answer.decision == "pending":
            approval = await rf.wait_for_decision(answer.approval_id, timeout=600)
            execution = await rf.execute(approval.id) if approval.outcome == "allow" else None
        else:
            execution = answer.execution
        if execution:
            ...
            await rf.report_outcome(execution.id, "succeeded")

The same methods, answers, errors, retries and Idempotency-Key rules as `RingfenceClient`: both
build their calls and decide their retries in `ringfence_client.protocol`. A wait holds no thread:
many agents' long-polls share one event loop and one connection pool.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from datetime import datetime
from types import TracebackType
from typing import Any, Literal, TypeVar

import httpx

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


class AsyncRingfenceClient:
    """One API base URL and one service-account token, for asyncio code.

    Use it as `async with` (or call `aclose()`) to close its connections; it opens them on first
    use, within the running event loop (and anew if used from another loop later). `max_retries`,
    `backoff` and `max_backoff` as in `RingfenceClient`. `transport` (an `httpx.AsyncBaseTransport`)
    replaces the network, e.g. with `httpx.MockTransport` in an agent's own tests.
    """

    def __init__(self, base_url: str, token: str, *, timeout: float = 30.0, max_retries: int = 4,
                 backoff: float = 0.25, max_backoff: float = 8.0, api_prefix: str = "/api/v1",
                 transport: httpx.AsyncBaseTransport | None = None) -> None:
        if not token:
            raise ValueError("a Ringfence API token is required")
        self.base_url = base_url.rstrip("/")
        self.api_prefix = api_prefix
        self.token = token
        self.timeout = timeout
        self.max_retries = max_retries
        self.backoff = backoff
        self.max_backoff = max_backoff
        self._transport = transport
        self._http: httpx.AsyncClient | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._sleep: Callable[[float], Awaitable[None]] = asyncio.sleep

    @classmethod
    def from_env(cls, **options: Any) -> AsyncRingfenceClient:
        """From RINGFENCE_URL and RINGFENCE_TOKEN."""
        return cls(os.environ["RINGFENCE_URL"], os.environ["RINGFENCE_TOKEN"], **options)

    async def __aenter__(self) -> AsyncRingfenceClient:
        return self

    async def __aexit__(self, kind: type[BaseException] | None, error: BaseException | None,
                        traceback: TracebackType | None) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the pooled connections (the client opens new ones if used again)."""
        http, self._http = self._http, None
        if http is not None:
            await http.aclose()

    # -- endpoints (as RingfenceClient's; see their docstrings there) -----------------------

    async def dispatch(self, workflow: str, action: str, parameters: Mapping[str, Any] | None = None, *,
                       evidence: Mapping[str, Any] | None = None, confidence: float | None = None,
                       idempotency_key: str | None = None, callback_url: str | None = None) -> DispatchResult:
        """Ask whether `action` may run now: allow, deny, or pending with an approval to wait for."""
        return await self._call(protocol.dispatch(workflow, action, parameters, evidence=evidence,
                                                  confidence=confidence, idempotency_key=idempotency_key,
                                                  callback_url=callback_url))

    async def approval(self, approval_id: int, *, wait: float = 0) -> Approval:
        """The request's state now, or within `wait` seconds if it closes (server-capped long-poll)."""
        return await self._call(protocol.approval(approval_id, wait=wait))

    async def wait_for_decision(self, approval_id: int, *, timeout: float = 600.0, poll: float = 25.0) -> Approval:
        """Long-poll until the request closes; raises DecisionTimeout after `timeout` seconds."""
        deadline = time.monotonic() + timeout
        while True:
            approval = await self.approval(approval_id, wait=protocol.next_wait(deadline - time.monotonic(), poll))
            if not approval.is_pending:
                return approval
            if deadline - time.monotonic() <= 0:
                raise DecisionTimeout(approval)

    async def execute(self, approval_id: int, *, idempotency_key: str | None = None) -> Execution:
        """Claim the one execution an approved request grants; NotExecuted when there is none."""
        return await self._call(protocol.execute(approval_id, idempotency_key=idempotency_key))

    async def report_outcome(self, execution_id: int, status: Literal["succeeded", "failed"], detail: str = "", *,
                             idempotency_key: str | None = None) -> Execution:
        """Say what happened to an execution, once."""
        return await self._call(protocol.report_outcome(execution_id, status, detail,
                                                        idempotency_key=idempotency_key))

    async def cancel(self, approval_id: int, reason: str, *, idempotency_key: str | None = None) -> Approval:
        """Withdraw a pending request this token asked for."""
        return await self._call(protocol.cancel(approval_id, reason, idempotency_key=idempotency_key))

    async def workflows(self) -> list[Workflow]:
        """The workflows this token may ask for."""
        return await self._call(protocol.workflows())

    async def actions(self, workflow: str) -> list[Action]:
        """The actions declared for a workflow, with their risk, quorum and rules."""
        return await self._call(protocol.actions(workflow))

    async def send_signals(self, workflow: str, samples: Iterable[Mapping[str, Any]], *,
                           plan: int | None = None) -> SignalsResult:
        """Post a batch of metric samples (at most 10,000)."""
        return await self._call(protocol.send_signals(workflow, samples, plan=plan))

    async def propose(self, workflow: str, kind: Literal["rollback", "fallback"], *, confidence: float, reason: str,
                      evidence: Mapping[str, Any] | None = None, metric: str | None = None, plan: int | None = None,
                      idempotency_key: str | None = None) -> ProposalResult:
        """Propose a rollback or fallback of the workflow's live rollout."""
        return await self._call(protocol.propose(workflow, kind, confidence=confidence, reason=reason,
                                                 evidence=evidence, metric=metric, plan=plan,
                                                 idempotency_key=idempotency_key))

    async def route(self, workflow: str, segment_kind: str, segment_value: str, *, key: str = "") -> Route:
        """Which version and mode serve a segment now."""
        return await self._call(protocol.route(workflow, segment_kind, segment_value, key=key))

    async def add_context_tag(self, workflow: str, kind: str, *, ends_at: datetime | str, reason: str,
                              metric: str | None = None, expected_change_percent: float | None = None,
                              starts_at: datetime | str | None = None, plan: int | None = None,
                              idempotency_key: str | None = None) -> JSON:
        """Tell Ringfence what a deployment is expected to change during a window."""
        return await self._call(protocol.add_context_tag(
            workflow, kind, ends_at=ends_at, reason=reason, metric=metric,
            expected_change_percent=expected_change_percent, starts_at=starts_at, plan=plan,
            idempotency_key=idempotency_key))

    async def pause(self, workflow: str, reason: str, *, idempotency_key: str | None = None) -> JSON:
        """Engage the workflow's kill switch."""
        return await self._call(protocol.pause(workflow, reason, idempotency_key=idempotency_key))

    def guard(self, workflow: str, action: str, **options: Any) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
        """Decorator for `async def` functions: run only under an execution Ringfence grants, then
        report the outcome (see `ringfence_client.guarded`); the wrapper is always awaited."""
        return guarded(self, workflow, action, **options)

    # -- transport ---------------------------------------------------------------------------

    async def _call(self, call: Call[T]) -> T:
        attempt = 0
        while True:
            try:
                return call.read(await self._send(call))
            except (ApiError, TransportError) as error:
                delay = self._retry_delay(call, error, attempt)
                if delay is None:
                    if isinstance(error, ApiError):
                        raise call.refused(error) from None
                    raise
                await self._sleep(delay)
            attempt += 1

    def _retry_delay(self, call: Call[Any], error: RingfenceError, attempt: int) -> float | None:
        return protocol.retry_delay(call, error, attempt, max_retries=self.max_retries, backoff=self.backoff,
                                    max_backoff=self.max_backoff)

    async def _send(self, call: Call[Any]) -> Response:
        loop = asyncio.get_running_loop()
        if self._http is None or self._loop is not loop:  # connections belong to the loop that opened them
            self._http, self._loop = httpx.AsyncClient(transport=self._transport, follow_redirects=True), loop
        url = call.url(self.base_url, self.api_prefix)
        try:
            raw = await self._http.request(call.method, url, content=call.content(), headers=call.headers(self.token),
                                           timeout=self.timeout + call.wait)
        except httpx.RequestError as error:
            raise TransportError(f"{call.method} {url}: {type(error).__name__}: {error}") from error
        payload = protocol.decode(raw.content)
        if raw.is_success:
            return Response(raw.status_code, payload, {name.lower(): value for name, value in raw.headers.items()})
        raise protocol.api_error(raw.status_code, payload, raw.headers)
