"""The Python client against a real server over HTTP: ask, wait, guard, retry with one key."""

from __future__ import annotations

import threading
import time

import pytest
from django.db import connection

from approvals import services as approval_services
from approvals.models import ApprovalRequest
from ringfence_client import ApiError, DecisionTimeout, Denied, PendingApproval, RingfenceClient
from tests.api.lossy_proxy import LossyProxy

pytestmark = pytest.mark.django_db(transaction=True)


def decide_later(request_id: int, actor, verdict: str, delay: float = 0.3) -> threading.Thread:
    def run() -> None:
        try:
            time.sleep(delay)
            approval_services.record_decision(request_id, actor=actor, verdict=verdict,
                                              justification="" if verdict == "approve" else "not now")
        finally:
            connection.close()

    thread = threading.Thread(target=run)
    thread.start()
    return thread


def test_dispatch_answers_are_typed(rf):
    allowed = rf.dispatch("refund-agent", "send_receipt", {"order": "A-1"})
    assert allowed.decision == "allow" and allowed.tier == 2 and allowed.approval_id is None
    assert allowed.execution.state == "granted" and allowed.rule is None
    pending = rf.dispatch("refund-agent", "refund_customer", {"order": "A-1"}, evidence={"summary": "x"},
                          confidence=0.7)
    assert pending.decision == "pending" and pending.approval_id and pending.poll_url.endswith(str(pending.approval_id))
    assert rf.dispatch("refund-agent", "wire_money").decision == "deny"


def test_wait_for_decision_returns_as_soon_as_a_person_decides(rf, approver):
    pending = rf.dispatch("refund-agent", "refund_customer", {"order": "A-1"})
    thread = decide_later(pending.approval_id, approver, "approve")
    started = time.monotonic()
    approval = rf.wait_for_decision(pending.approval_id, timeout=20, poll=10)
    thread.join()
    assert approval.state == "approved" and approval.outcome == "allow"
    assert approval.decisions[0].decided_by == "alice"
    assert time.monotonic() - started < 5  # answered by the long-poll, not at the end of `poll`


def test_wait_for_decision_gives_up_after_its_timeout(rf):
    pending = rf.dispatch("refund-agent", "refund_customer", {"order": "A-1"})
    with pytest.raises(DecisionTimeout) as timeout:
        rf.wait_for_decision(pending.approval_id, timeout=0.5, poll=0.2)
    assert timeout.value.approval.state == "pending"


def test_guard_runs_the_function_only_when_allowed(rf, approver):
    calls: list[str] = []

    @rf.guard("refund-agent", "send_receipt", parameters=lambda order: {"order": order})
    def send_receipt(order: str) -> str:
        calls.append(order)
        return f"sent {order}"

    @rf.guard("refund-agent", "wire_money")
    def wire_money() -> None:
        calls.append("wired")

    assert send_receipt("A-1") == "sent A-1"
    with pytest.raises(Denied) as denied:
        wire_money()
    assert denied.value.dispatch.code == "unknown_action"
    assert calls == ["A-1"]


def test_guard_waits_for_approval_or_raises_as_chosen(rf, approver):
    calls: list[str] = []

    @rf.guard("refund-agent", "refund_customer", parameters=lambda order: {"order": order}, timeout=20)
    def refund(order: str) -> str:
        calls.append(order)
        return "refunded"

    @rf.guard("refund-agent", "refund_customer", on_pending="raise")
    def refund_later() -> None:
        calls.append("later")

    threads = []
    for order, verdict in (("A-1", "approve"), ("B-2", "reject")):
        # The person decides once the guard's request exists, while the guard long-polls.
        threads.append(threading.Thread(target=decide_when_asked, args=(order, approver, verdict)))
        threads[-1].start()
    assert refund("A-1") == "refunded"
    with pytest.raises(Denied) as denied:
        refund("B-2")
    for thread in threads:
        thread.join()
    assert denied.value.approval.state == "rejected" and denied.value.approval_id == denied.value.approval.id

    with pytest.raises(PendingApproval) as pending:
        refund_later()
    assert ApprovalRequest.objects.get(pk=pending.value.approval_id).state == "pending"
    assert calls == ["A-1"]
    assert ApprovalRequest.objects.count() == 3


def decide_when_asked(order: str, actor, verdict: str, within: float = 15.0) -> None:
    """Decide the request for `order` as soon as it is opened (polled against a deadline)."""
    deadline = time.monotonic() + within
    try:
        while (req := ApprovalRequest.objects.filter(parameters__order=order).first()) is None:
            assert time.monotonic() < deadline, f"no request for {order} within {within} s"
            time.sleep(0.02)
        approval_services.record_decision(req.pk, actor=actor, verdict=verdict,
                                          justification="" if verdict == "approve" else "not now")
    finally:
        connection.close()


def test_a_lost_answer_is_retried_with_the_same_key_and_acts_once(live_server, agent, actions):
    proxy = LossyProxy(int(live_server.url.rsplit(":", 1)[1])).start()
    try:
        rf = RingfenceClient(f"http://127.0.0.1:{proxy.port}", agent.token, timeout=10, backoff=0.05)
        proxy.lose_next = 2
        answer = rf.dispatch("refund-agent", "refund_customer", {"order": "A-1"})
    finally:
        proxy.stop()
    assert proxy.lost == 2 and proxy.forwarded == 3
    assert answer.decision == "pending" and answer.replayed
    assert ApprovalRequest.objects.count() == 1 and ApprovalRequest.objects.get().pk == answer.approval_id


def test_rate_limited_calls_are_retried_after_the_servers_delay(rf, settings):
    settings.API_RATE_LIMIT_REQUESTS = 1
    settings.API_RATE_LIMIT_WINDOW_SECONDS = 1
    started = time.monotonic()
    assert rf.dispatch("refund-agent", "send_receipt").decision == "allow"
    assert rf.dispatch("refund-agent", "send_receipt").decision == "allow"
    assert time.monotonic() - started >= 0.9


def test_refusals_raise_api_errors_with_the_problem_details(rf):
    with pytest.raises(ApiError) as invalid:
        rf.dispatch("refund-agent", "send_receipt", confidence=3)
    assert invalid.value.status == 422 and invalid.value.code == "invalid"
    assert invalid.value.errors[0].field == "confidence"
    with pytest.raises(ApiError) as missing:
        rf.approval(999_999)
    assert missing.value.status == 404 and missing.value.code == "not_found"
    with pytest.raises(ApiError) as unauthenticated:
        RingfenceClient(rf.base_url, "rf_wrong").approval(1)
    assert unauthenticated.value.status == 401


def test_pause_through_the_client_then_dispatch_is_denied(rf):
    assert rf.pause("refund-agent", "incident 42")["paused"] is True
    answer = rf.dispatch("refund-agent", "send_receipt")
    assert answer.decision == "deny" and answer.code == "paused"


def test_an_agent_posts_signals_reads_the_route_and_proposes_a_rollback(rf, live_plan):
    from datetime import UTC, datetime

    now = datetime.now(UTC)
    result = rf.send_signals("refund-agent", [
        {"metric": "latency_p95_ms", "value": 420.0, "observed_at": now, "segment": "internal_team:support-ops"},
        {"metric": "latency_p95_ms", "value": 420.0, "observed_at": now, "segment": "internal_team:support-ops"},
    ])
    assert (result.plan, result.stored, result.duplicates) == (live_plan.pk, 1, 1)

    route = rf.route("refund-agent", "internal_team", "support-ops")
    assert route.version == "prompt-v2" and route.mode == "normal" and route.exposed

    proposal = rf.propose("refund-agent", "rollback", confidence=0.9, reason="latency doubled",
                          evidence={"latency_p95_ms": 1200}, idempotency_key="rollback-1")
    again = rf.propose("refund-agent", "rollback", confidence=0.9, reason="latency doubled",
                       evidence={"latency_p95_ms": 1200}, idempotency_key="rollback-1")
    assert proposal.kind == "rollback" and proposal.tier == 2 and proposal.handling == "override_window"
    assert again.id == proposal.id and proposal.approval_id


def test_the_guard_shows_ringfence_every_argument_by_name_by_default(rf):
    calls: list = []

    @rf.guard("refund-agent", "refund_customer", on_pending="raise")
    def refund(order: str, amount: str, currency: str = "EUR") -> None:
        calls.append(order)

    with pytest.raises(PendingApproval):
        refund("A-9", "400")
    assert ApprovalRequest.objects.get().parameters == {"order": "A-9", "amount": "400", "currency": "EUR"}
    assert calls == []


def test_the_guard_refuses_arguments_that_are_not_json_by_default(rf):
    from decimal import Decimal

    @rf.guard("refund-agent", "refund_customer", on_pending="raise")
    def refund(order: str, amount: Decimal) -> None: ...

    with pytest.raises(TypeError, match="parameters="):
        refund("A-9", Decimal("400"))
    assert not ApprovalRequest.objects.exists()


def test_a_poll_longer_than_the_servers_limit_is_capped_at_it(rf, approver):
    from ringfence_client import protocol

    assert protocol.next_wait(600, 300) == protocol.MAX_WAIT_SECONDS == 60
    assert protocol.approval(1, wait=300).query == {"wait": "60"}
    pending = rf.dispatch("refund-agent", "refund_customer", {"order": "A-1"})
    thread = decide_later(pending.approval_id, approver, "approve")
    approval = rf.wait_for_decision(pending.approval_id, timeout=120, poll=120)  # was a 422 at once
    thread.join()
    assert approval.state == "approved"
