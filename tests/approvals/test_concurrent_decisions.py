"""Decisions released at the same instant (CON-01 … CON-04, TMR-08 c): one row lock decides.

Each race runs on committed data with one database connection per racer. Trial counts are kept
modest so the suite stays quick; the figures are printed.
"""

from __future__ import annotations

from collections import Counter

import pytest
import time_machine
from django.test import Client
from django.urls import reverse

from approvals import outcomes, services
from approvals.models import ApprovalRequest, Decision
from audit import log as audit
from audit.models import AuditEvent
from core.errors import TransitionRefused
from governance.permissions import Role
from tests import factories
from tests.approvals.figures import p99, report
from tests.approvals.racing import Racers

pytestmark = pytest.mark.django_db(transaction=True)
State = ApprovalRequest.State
TRIALS = 20  # per N for CON-01 through the service; the other races use fewer
HTTP_TRIALS = 5
RACES = 50


@pytest.fixture
def racers():
    with Racers(16) as pool:
        yield pool


@pytest.fixture
def approvers(workflow):
    people = []
    for i in range(16):
        user = factories.make_user(f"approver{i:02d}", role=Role.APPROVER, first_name=f"Approver{i:02d}")
        factories.scope(user, workflow)
        people.append(user)
    return people


def ask(workflow, agent, **fields) -> ApprovalRequest:
    return services.create_request(**{"workflow": workflow, "kind": "agent_action", "action": "refund_customer",
                                      "requester": agent, **fields})


def refusal_code(outcome) -> str | None:
    return outcome.error.code if isinstance(outcome.error, TransitionRefused) else None


def approval_actions(req: ApprovalRequest) -> list[str]:
    return list(AuditEvent.objects.filter(subject_type="approvals.approvalrequest", subject_id=str(req.pk))
                .order_by("seq").values_list("action", flat=True))


@pytest.mark.parametrize("n", [2, 8, 16])
def test_one_of_n_simultaneous_approvers_wins(request, racers, workflow, agent, approvers, n):
    """CON-01 through the service: exactly one winner; the others are told who decided."""
    winners, latencies = Counter(), []
    for _ in range(TRIALS):
        req = ask(workflow, agent)
        results = racers.race([lambda u=u, req=req: services.record_decision(req.pk, actor=u, verdict="approve")
                               for u in approvers[:n]])
        won = [r for r in results if r.error is None]
        lost = [r for r in results if r.error is not None]
        winners[len(won)] += 1
        latencies += [r.seconds * 1000 for r in results]
        req.refresh_from_db()
        assert len(won) == 1 and req.state == State.APPROVED
        assert all(refusal_code(r) == "not_pending" for r in lost)
        assert all(str(r.error).startswith(f"Already approved by {req.closed_by_label} at ") for r in lost)
        assert Decision.objects.filter(request=req).count() == 1
        assert approval_actions(req) == ["approval.requested", "approval.decided", "approval.approved"]
    assert audit.verify_database().ok
    report(request, f"CON-01 service N={n}", trials=TRIALS, winners=dict(winners), refused_409_per_trial=n - 1,
           p99_decision_ms=round(p99(latencies), 1))


@pytest.mark.parametrize("n", [2, 8, 16])
def test_one_of_n_simultaneous_approvers_wins_over_http(request, racers, workflow, agent, approvers, n):
    """CON-01 through the web: one redirect, N−1 answers 409 naming the decider."""
    clients = []
    for user in approvers[:n]:
        client = Client()
        client.force_login(user)
        clients.append(client)
    winners, statuses, latencies = Counter(), Counter(), []
    for _ in range(HTTP_TRIALS):
        req = ask(workflow, agent)
        url = reverse("approvals:decide", args=[req.pk])
        results = racers.race([lambda c=c, url=url: c.post(url, {"verdict": "approve"}, HTTP_HX_REQUEST="true")
                               for c in clients])
        assert all(r.error is None for r in results), [r.error for r in results]
        codes = [r.value.status_code for r in results]
        statuses.update(codes)
        winners[codes.count(200)] += 1
        latencies += [r.seconds * 1000 for r in results]
        req.refresh_from_db()
        assert codes.count(200) == 1 and codes.count(409) == n - 1
        losers = [r.value.content.decode() for r in results if r.value.status_code == 409]
        assert all(f"Already approved by {req.closed_by_label} at" in body for body in losers)
        assert Decision.objects.filter(request=req).count() == 1
    assert audit.verify_database().ok
    report(request, f"CON-01 http N={n}", trials=HTTP_TRIALS, winners=dict(winners), statuses=dict(statuses),
           p99_request_ms=round(p99(latencies), 1))


def test_approve_against_reject_ends_in_exactly_one_of_them(request, racers, workflow, agent, approvers):
    """CON-02: 8 approvers and 8 rejecters at once."""
    finals = Counter()
    for _ in range(TRIALS // 2):
        req = ask(workflow, agent)
        actions = [lambda u=u, req=req: services.record_decision(req.pk, actor=u, verdict="approve")
                   for u in approvers[:8]]
        actions += [lambda u=u, req=req: services.record_decision(req.pk, actor=u, verdict="reject", justification="no")
                    for u in approvers[8:]]
        results = racers.race(actions)
        req.refresh_from_db()
        finals[req.state] += 1
        assert req.state in (State.APPROVED, State.REJECTED)
        assert sum(r.error is None for r in results) == 1
        assert sorted(refusal_code(r) for r in results if r.error) == ["not_pending"] * 15
        assert Decision.objects.filter(request=req).count() == 1
    report(request, "CON-02", trials=TRIALS // 2, final_states=dict(finals), invalid_final_states=0)


def test_a_quorum_of_two_counts_two_people_once_each(request, racers, workflow, agent, approvers):
    """CON-03: quorum 2, three approvers at once; and one approver double-clicking."""
    for _ in range(TRIALS // 2):
        req = ask(workflow, agent, quorum=2)
        results = racers.race([lambda u=u, req=req: services.record_decision(req.pk, actor=u, verdict="approve")
                               for u in approvers[:3]])
        req.refresh_from_db()
        assert req.state == State.APPROVED
        assert Decision.objects.filter(request=req).count() == 2
        assert [refusal_code(r) for r in results if r.error] == ["not_pending"]
    double_clicks = Counter()
    for _ in range(TRIALS // 2):
        req = ask(workflow, agent, quorum=2)
        results = racers.race(
            [lambda req=req: services.record_decision(req.pk, actor=approvers[0], verdict="approve")] * 2)
        double_clicks[tuple(sorted(str(refusal_code(r)) for r in results))] += 1
        assert Decision.objects.filter(request=req).count() == 1
        assert [refusal_code(r) for r in results if r.error] == ["already_decided"]
    report(request, "CON-03", trials=TRIALS // 2, decisions_per_request=2, duplicate_decisions=0,
           double_click_outcomes=dict(double_clicks))


@pytest.mark.parametrize("levels", [1, 2])
def test_a_decision_racing_the_sweep_at_the_deadline_is_never_both(request, racers, admin_user, workflow, agent,
                                                                   approvers, levels):
    """CON-04: approve released together with the sweep at due_at. One level: approved or expired;
    two levels: approved (the sweep found nothing) or escalated and then approved."""
    services.define_policy(actor=admin_user, workflow=workflow, mode="gate",
                           levels=[{"groups": ["approver"], "timeout_seconds": 60}] * levels)
    combos = Counter()
    for _ in range(TRIALS):
        req = ask(workflow, agent)
        with time_machine.travel(req.due_at, tick=True):
            results = racers.race([lambda req=req: services.record_decision(req.pk, actor=approvers[0],
                                                                            verdict="approve"),
                                   lambda: services.handle_all_due()])
        req.refresh_from_db()
        actions = [a for a in approval_actions(req) if a != "approval.requested"]
        combos[" → ".join(actions)] += 1
        assert results[1].error is None
        if levels == 1:
            assert actions in (["approval.decided", "approval.approved"], ["approval.expired"])
            assert (req.state == State.EXPIRED) == (refusal_code(results[0]) == "not_pending")
        else:
            assert actions in (["approval.decided", "approval.approved"],
                               ["approval.escalated", "approval.decided", "approval.approved"])
            assert req.state == State.APPROVED
    report(request, f"CON-04 levels={levels}", trials=TRIALS, outcomes=dict(combos), invalid_combinations=0)


def test_override_racing_the_window_deadline_runs_the_executor_iff_auto_approved(request, racers, admin_user, workflow,
                                                                                  agent, approvers):
    """TMR-08 (c): override and the deadline sweep released together, 50 times."""
    services.define_policy(actor=admin_user, workflow=workflow, mode="override_window",
                           levels=[{"groups": ["approver"], "timeout_seconds": 60}])
    executed = Counter()

    def executor(request_id: int) -> None:
        if ApprovalRequest.objects.get(pk=request_id).state == State.AUTO_APPROVED:
            executed[request_id] += 1

    outcomes.register("agent_action", executor)
    states, inconsistent = Counter(), 0
    try:
        for _ in range(RACES):
            req = ask(workflow, agent, mode="override_window")
            with time_machine.travel(req.due_at, tick=True):
                racers.race([lambda req=req: services.record_decision(req.pk, actor=approvers[0], verdict="override",
                                                                      reason="noise", justification="False alarm."),
                             lambda: services.handle_all_due()])
            outcomes.run(req.pk)
            req.refresh_from_db()
            states[req.state] += 1
            assert req.state in (State.OVERRIDDEN, State.AUTO_APPROVED)
            inconsistent += executed[req.pk] != (1 if req.state == State.AUTO_APPROVED else 0)
    finally:
        outcomes.unregister("agent_action", executor)
    assert inconsistent == 0
    report(request, "TMR-08c", races=RACES, outcomes=dict(states), executor_calls_inconsistent_with_state=inconsistent)
