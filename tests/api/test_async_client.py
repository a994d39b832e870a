"""The async client against a real server over HTTP: the same answers, waits, claims, outcomes and
retries with one key as the sync client, awaited on one event loop."""

from __future__ import annotations

import asyncio
import threading
import time
from datetime import UTC, datetime

import httpx
import pytest

from approvals.models import ApprovalRequest, Execution
from ringfence_client import (
    ApiError,
    AsyncRingfenceClient,
    DecisionTimeout,
    NotExecuted,
    RingfenceClient,
    TransportError,
)
from tests.api.conftest import decide
from tests.api.lossy_proxy import LossyProxy

pytestmark = pytest.mark.django_db(transaction=True)


def client(url: str, agent, **options) -> AsyncRingfenceClient:
    return AsyncRingfenceClient(url, agent.token, timeout=10, backoff=0.05, **options)


def decide_later(approval_id: int, actor, verdict: str, delay: float = 0.3) -> threading.Timer:
    timer = threading.Timer(delay, decide, args=(approval_id, actor, verdict))
    timer.start()
    return timer


def test_dispatch_answers_are_typed(url, agent):
    async def ask():
        async with client(url, agent) as rf:
            return (await rf.dispatch("refund-agent", "send_receipt", {"order": "A-1"}),
                    await rf.dispatch("refund-agent", "refund_customer", {"order": "A-1"}, evidence={"summary": "x"},
                                      confidence=0.7),
                    await rf.dispatch("refund-agent", "wire_money"))

    allowed, pending, denied = asyncio.run(ask())
    assert allowed.decision == "allow" and allowed.tier == 2 and allowed.approval_id is None
    assert allowed.execution.state == "granted" and allowed.rule is None
    assert pending.decision == "pending" and pending.poll_url.endswith(str(pending.approval_id))
    assert ApprovalRequest.objects.get().pk == pending.approval_id
    assert denied.decision == "deny" and denied.code == "unknown_action"


def test_pending_then_approved_then_executed_once_then_the_outcome_is_reported(url, agent, approver):
    timers: list[threading.Timer] = []

    async def act():
        async with client(url, agent) as rf:
            pending_id = (await rf.dispatch("refund-agent", "refund_customer", {"order": "A-1"})).approval_id
            timers.append(decide_later(pending_id, approver, "approve"))
            started = time.monotonic()
            approval = await rf.wait_for_decision(pending_id, timeout=20, poll=10)
            waited = time.monotonic() - started
            execution = await rf.execute(approval.id)
            with pytest.raises(NotExecuted) as second:
                await rf.execute(approval.id)
            reported = await rf.report_outcome(execution.id, "succeeded", "refunded")
            again = await rf.report_outcome(execution.id, "succeeded", "refunded")
            with pytest.raises(ApiError) as conflict:
                await rf.report_outcome(execution.id, "failed")
            return approval, waited, execution, second.value, reported, again, conflict.value

    approval, waited, execution, second, reported, again, conflict = asyncio.run(act())
    timers[0].join()
    pending_id = ApprovalRequest.objects.get().pk
    assert approval.state == "approved" and approval.outcome == "allow" and approval.decisions[0].decided_by == "alice"
    assert waited < 5  # answered by the long-poll, not at the end of `poll`
    assert (execution.state, execution.approval_id) == ("granted", pending_id)
    assert (second.status, second.code, second.approval_id) == (409, "already_executed", pending_id)
    assert (reported.state, reported.detail) == ("succeeded", "refunded") and again == reported
    assert (conflict.status, conflict.code) == (409, "outcome_reported")
    stored = Execution.objects.get()
    assert (stored.pk, stored.request_id, stored.state) == (execution.id, pending_id, "succeeded")


def test_wait_for_decision_gives_up_after_its_timeout(url, agent):
    async def wait():
        async with client(url, agent) as rf:
            pending = await rf.dispatch("refund-agent", "refund_customer", {"order": "A-1"})
            await rf.wait_for_decision(pending.approval_id, timeout=0.5, poll=0.2)

    with pytest.raises(DecisionTimeout) as timeout:
        asyncio.run(wait())
    assert timeout.value.approval.state == "pending"


def test_many_waits_share_one_event_loop(url, agent, approver):
    """Ten agents' long-polls held at once by one task each; all wake once a person decides."""
    rf_sync = RingfenceClient(url, agent.token, timeout=10)
    ids = [rf_sync.dispatch("refund-agent", "refund_customer", {"order": f"A-{n}"}).approval_id for n in range(10)]

    async def wait_all():
        async with client(url, agent) as rf:
            waits = [asyncio.create_task(rf.wait_for_decision(i, timeout=20, poll=10)) for i in ids]
            await asyncio.sleep(0.5)
            still_waiting = sum(not w.done() for w in waits)
            started = time.monotonic()
            for approval_id in ids:
                await asyncio.to_thread(decide, approval_id, approver, "approve")
            approvals = await asyncio.gather(*waits)
            return approvals, still_waiting, time.monotonic() - started

    approvals, still_waiting, elapsed = asyncio.run(wait_all())
    assert still_waiting == 10
    assert [a.state for a in approvals] == ["approved"] * 10 and [a.id for a in approvals] == ids
    assert elapsed < 5  # woken by their long-polls, not at the end of `poll`


def test_a_lost_answer_is_retried_with_the_same_key_and_acts_once(url, agent, approver):
    proxy = LossyProxy(int(url.rsplit(":", 1)[1])).start()

    async def through_the_proxy():
        async with client(f"http://127.0.0.1:{proxy.port}", agent) as rf:
            proxy.lose_next = 2
            answer = await rf.dispatch("refund-agent", "refund_customer", {"order": "A-1"})
            await asyncio.to_thread(decide, answer.approval_id, approver, "approve")
            proxy.lose_next = 1
            execution = await rf.execute(answer.approval_id)
            return answer, execution

    try:
        answer, execution = asyncio.run(through_the_proxy())
    finally:
        proxy.stop()
    assert proxy.lost == 3 and proxy.forwarded == 5
    assert answer.decision == "pending" and answer.replayed
    assert ApprovalRequest.objects.count() == 1 and ApprovalRequest.objects.get().pk == answer.approval_id
    assert Execution.objects.get().pk == execution.id and execution.approval_id == answer.approval_id


def test_rate_limited_calls_are_retried_after_the_servers_delay(url, agent, settings):
    settings.API_RATE_LIMIT_REQUESTS = 1
    settings.API_RATE_LIMIT_WINDOW_SECONDS = 1

    async def twice():
        async with client(url, agent) as rf:
            return [(await rf.dispatch("refund-agent", "send_receipt")).decision for _ in range(2)]

    started = time.monotonic()
    assert asyncio.run(twice()) == ["allow", "allow"]
    assert time.monotonic() - started >= 0.9


def test_refusals_raise_api_errors_and_an_unreachable_server_a_transport_error(url, agent):
    async def refused():
        async with client(url, agent) as rf:
            with pytest.raises(ApiError) as invalid:
                await rf.dispatch("refund-agent", "send_receipt", confidence=3)
            with pytest.raises(ApiError) as missing:
                await rf.approval(999_999)
        async with AsyncRingfenceClient(url, "rf_wrong") as stranger:
            with pytest.raises(ApiError) as unauthenticated:
                await stranger.approval(1)
        return invalid.value, missing.value, unauthenticated.value

    invalid, missing, unauthenticated = asyncio.run(refused())
    assert (invalid.status, invalid.code, invalid.errors[0].field) == (422, "invalid", "confidence")
    assert (missing.status, missing.code) == (404, "not_found")
    assert unauthenticated.status == 401

    import socket

    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    slept: list[float] = []

    async def unreachable():
        rf = client(f"http://127.0.0.1:{port}", agent, max_retries=2)

        async def sleep(seconds: float) -> None:
            slept.append(seconds)

        rf._sleep = sleep
        async with rf:
            await rf.dispatch("refund-agent", "send_receipt")

    with pytest.raises(TransportError):
        asyncio.run(unreachable())
    assert len(slept) == 2  # two retries, then the error


def test_discovery_cancel_signals_route_proposal_and_pause(url, agent, live_plan):
    async def calls():
        async with client(url, agent) as rf:
            workflows = await rf.workflows()
            actions = await rf.actions("refund-agent")
            pending = await rf.dispatch("refund-agent", "refund_customer", {"order": "A-1"})
            cancelled = await rf.cancel(pending.approval_id, "the customer withdrew the claim")
            now = datetime.now(UTC)
            sample = {"metric": "latency_p95_ms", "value": 420.0, "observed_at": now,
                      "segment": "internal_team:support-ops"}
            signals = await rf.send_signals("refund-agent", [sample, dict(sample)])
            route = await rf.route("refund-agent", "internal_team", "support-ops")
            proposal = await rf.propose("refund-agent", "rollback", confidence=0.9, reason="latency doubled",
                                        evidence={"latency_p95_ms": 1200}, idempotency_key="rollback-1")
            again = await rf.propose("refund-agent", "rollback", confidence=0.9, reason="latency doubled",
                                     evidence={"latency_p95_ms": 1200}, idempotency_key="rollback-1")
            paused = await rf.pause("refund-agent", "incident 42")
            after = await rf.dispatch("refund-agent", "send_receipt")
            return workflows, actions, cancelled, signals, route, proposal, again, paused, after

    workflows, actions, cancelled, signals, route, proposal, again, paused, after = asyncio.run(calls())
    assert [(w.slug, w.tier) for w in workflows] == [("refund-agent", 2)]
    assert {a.name for a in actions} == {"send_receipt", "issue_credit", "refund_customer", "close_account"}
    assert (cancelled.state, cancelled.outcome) == ("cancelled", "deny")
    assert (signals.plan, signals.stored, signals.duplicates) == (live_plan.pk, 1, 1)
    assert route.version == "prompt-v2" and route.mode == "normal" and route.exposed
    assert proposal.kind == "rollback" and proposal.handling == "override_window" and again.id == proposal.id
    assert paused["paused"] is True and (after.decision, after.code) == ("deny", "paused")


def test_a_retry_after_longer_than_the_client_waits_is_raised_at_once_not_retried_early():
    asked: list[str] = []

    def network(request: httpx.Request) -> httpx.Response:
        asked.append(request.headers["Idempotency-Key"])
        return httpx.Response(429, headers={"Retry-After": "45"}, json={"code": "rate_limited"})

    async def call():
        rf = AsyncRingfenceClient("http://ringfence.test", "rf_x", max_backoff=8.0,
                                  transport=httpx.MockTransport(network))
        async with rf:
            with pytest.raises(ApiError) as refused:
                await rf.dispatch("w", "a")
        return refused.value

    refused = asyncio.run(call())
    assert (refused.status, refused.retry_after, len(asked)) == (429, 45, 1)


def test_retries_honour_retry_after_and_reuse_one_key_per_call():
    """The retry rules the async client shares with the sync one, on a transport that misbehaves."""
    keys: list[str] = []
    pending = {"decision": "pending", "code": "needs_approval", "reason": "", "workflow": "w", "action": "a",
               "tier": 2, "business_hours": True, "approval_id": 7}
    answers = iter([
        httpx.Response(503, headers={"Retry-After": "7"}, json={"code": "unavailable"}),
        httpx.ConnectError("connection refused"),
        httpx.Response(429, headers={"Retry-After": "2"}, json={"code": "rate_limited"}),
        httpx.Response(200, headers={"Idempotent-Replayed": "true"}, json=pending),
        httpx.Response(200, json=pending),
        httpx.Response(422, json={"code": "invalid", "errors": [{"in": "body", "field": "confidence"}]}),
    ])

    def network(request: httpx.Request) -> httpx.Response:
        keys.append(request.headers["Idempotency-Key"])
        answer = next(answers)
        if isinstance(answer, Exception):
            raise answer
        return answer

    slept: list[float] = []

    async def calls():
        rf = AsyncRingfenceClient("http://ringfence.test", "rf_x", backoff=0.01, transport=httpx.MockTransport(network))

        async def sleep(seconds: float) -> None:
            slept.append(seconds)

        rf._sleep = sleep
        async with rf:
            first = await rf.dispatch("w", "a")
            second = await rf.dispatch("w", "a")
            with pytest.raises(ApiError) as refused:
                await rf.dispatch("w", "a", confidence=3)
        return first, second, refused.value

    first, second, refused = asyncio.run(calls())
    assert first.replayed and not second.replayed and first.approval_id == 7
    assert len(keys) == 6 and len(set(keys[:4])) == 1 and len({keys[3], keys[4], keys[5]}) == 3
    assert slept[0] == 7 and 0 < slept[1] <= 0.02 and slept[2] == 2 and len(slept) == 3  # the 422 is not retried
    assert (refused.status, refused.code, refused.errors[0].field) == (422, "invalid", "confidence")


def test_one_client_serves_one_event_loop_after_another(url, agent):
    rf = client(url, agent)
    first = asyncio.run(rf.workflows())
    second = asyncio.run(rf.workflows())  # its pooled connections belonged to the first, closed loop
    assert [w.slug for w in first] == [w.slug for w in second] == ["refund-agent"]
