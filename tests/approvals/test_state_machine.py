"""IN-03: random sequences of create / decide / escalate / cancel / advance-the-clock, checked step
by step against a plain-Python model of the approval rules (the default escalation policies).

Invariants after every step: the service and the model agree on every outcome (state, level,
refusal code); closed requests never change; approvals never exceed the quorum; the requester
never decides; each transition wrote exactly the audit events the model expects; the chain verifies.
"""

from __future__ import annotations

import datetime as dt
from collections import Counter
from dataclasses import dataclass, field

import time_machine
from django.contrib.auth.models import Group
from django.db import transaction
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import Bundle, RuleBasedStateMachine, invariant, rule, run_state_machine_as_test

from approvals import services
from approvals.models import ApprovalRequest, Decision
from audit import log as audit
from audit.models import AuditEvent
from core.errors import TransitionRefused
from governance.permissions import Role
from tests import factories
from tests.approvals.figures import report

T0 = dt.datetime(2026, 3, 2, 10, 0, tzinfo=dt.UTC)
GATE_LEVELS = [(("approver",), 600), (("senior",), 1200)]  # the default policies, as the model sees them
WINDOW_LEVELS = [(("approver",), 120)]
VERDICTS = {"gate": ("approve", "reject"), "override_window": ("approve", "override")}
PENDING = "pending"


@dataclass
class Modelled:
    pk: int
    mode: str
    quorum: int
    due_at: dt.datetime
    level: int = 0
    state: str = PENDING
    approvals: set[str] = field(default_factory=set)
    deciders: set[str] = field(default_factory=set)
    events: int = 1

    @property
    def levels(self):
        return GATE_LEVELS if self.mode == "gate" else WINDOW_LEVELS


class World:
    """People and the agent; filled in by the test before the machine runs."""

    people: dict = {}
    roles: dict[str, str] = {}
    agent = None
    workflow = None


def named(role: str, level: int, levels) -> bool:
    return any(role in who for who, _ in levels[: level + 1])


class ApprovalMachine(RuleBasedStateMachine):
    requests = Bundle("requests")

    def __init__(self) -> None:
        super().__init__()
        self.traveller = time_machine.travel(T0, tick=False)
        self.clock = self.traveller.start()
        self.savepoint = transaction.savepoint_create()
        self.model: dict[int, Modelled] = {}
        self.closed_seen: dict[int, tuple] = {}
        self.steps = 0

    def teardown(self) -> None:
        transaction.savepoint_rollback(self.savepoint)
        self.traveller.stop()
        STATS["examples"] += 1
        STATS["steps"] += self.steps

    def now(self) -> dt.datetime:
        from core import clock

        return clock.now()

    def expect(self, call, code: str | None):
        self.steps += 1
        try:
            call()
        except TransitionRefused as refusal:
            assert refusal.code == code, f"refused with {refusal.code} ({refusal.message}); the model expected {code}"
            return False
        assert code is None, f"the service accepted; the model expected a refusal {code}"
        return True

    @rule(target=requests, mode=st.sampled_from(["gate", "override_window"]), quorum=st.integers(1, 2))
    def create(self, mode, quorum):
        req = services.create_request(workflow=World.workflow, kind="agent_action", action="refund_customer",
                                      requester=World.agent, mode=mode, quorum=quorum)
        self.steps += 1
        first_timeout = (GATE_LEVELS if mode == "gate" else WINDOW_LEVELS)[0][1]
        self.model[req.pk] = Modelled(req.pk, mode, quorum, self.now() + dt.timedelta(seconds=first_timeout))
        return req.pk

    @rule(pk=requests, who=st.sampled_from(["alice", "bob", "sam", "rhea", "mallory"]),
          verdict=st.sampled_from(["approve", "reject", "override"]), justified=st.booleans(), reasoned=st.booleans())
    def decide(self, pk, who, verdict, justified, reasoned):
        m, role = self.model[pk], World.roles[who]
        if role == "outsider":
            code = "forbidden"
        elif m.state != PENDING:
            code = "not_pending"
        elif role == "requester":
            code = "four_eyes"
        elif not named(role, m.level, m.levels):
            code = "forbidden"
        elif verdict not in VERDICTS[m.mode]:
            code = "invalid"
        elif verdict != "approve" and not justified:
            code = "justification_required"
        elif verdict == "override" and not reasoned:
            code = "invalid"
        elif who in m.deciders:
            code = "already_decided"
        else:
            code = None
        accepted = self.expect(lambda: services.record_decision(
            pk, actor=World.people[who], verdict=verdict, justification="because" if justified else "",
            reason="noise" if reasoned else ""), code)
        if accepted:
            m.deciders.add(who)
            m.events += 1
            if verdict == "approve":
                m.approvals.add(who)
                if len(m.approvals) >= m.quorum:
                    m.state, m.events = "approved", m.events + 1
            else:
                m.state, m.events = ("rejected" if verdict == "reject" else "overridden"), m.events + 1

    @rule(pk=requests, who=st.sampled_from(["alice", "sam", "rhea"]))
    def escalate_by_hand(self, pk, who):
        m, role = self.model[pk], World.roles[who]
        if m.state != PENDING:
            code = "not_pending"
        elif m.level + 1 >= len(m.levels):
            code = "conflict"
        elif role == "requester":
            code = "four_eyes"
        elif not named(role, m.level, m.levels):
            code = "forbidden"
        else:
            code = None
        if self.expect(lambda: services.escalate_request(pk, actor=World.people[who], reason="second opinion"), code):
            m.level += 1
            m.due_at = self.now() + dt.timedelta(seconds=m.levels[m.level][1])
            m.events += 1

    @rule(pk=requests, by_agent=st.booleans())
    def cancel(self, pk, by_agent):
        m = self.model[pk]
        code = "forbidden" if not by_agent else ("not_pending" if m.state != PENDING else None)
        actor = World.agent if by_agent else World.people["mallory"]
        if self.expect(lambda: services.cancel_request(pk, actor=actor, reason="withdrawn"), code):
            m.state, m.events = "cancelled", m.events + 1

    @rule(seconds=st.integers(0, 1500))
    def advance_clock_and_sweep(self, seconds):
        self.clock.shift(dt.timedelta(seconds=seconds))
        now = self.now()
        services.handle_all_due()
        self.steps += 1
        for m in self.model.values():
            while m.state == PENDING and m.due_at <= now:
                m.events += 1
                if m.level + 1 < len(m.levels):
                    m.level += 1
                    m.due_at += dt.timedelta(seconds=m.levels[m.level][1])
                else:
                    m.state = "expired" if m.mode == "gate" else "auto_approved"

    @invariant()
    def service_and_model_agree(self):
        rows = {r.pk: r for r in ApprovalRequest.objects.filter(pk__in=self.model)}
        approvals = Counter(Decision.objects.filter(request_id__in=self.model, verdict="approve")
                            .values_list("request_id", flat=True))
        events = Counter(int(pk) for pk in AuditEvent.objects.filter(
            subject_type="approvals.approvalrequest", subject_id__in=[str(pk) for pk in self.model])
            .values_list("subject_id", flat=True))
        assert not Decision.objects.filter(request_id__in=self.model, decided_by=World.people["rhea"]).exists()
        for pk, m in self.model.items():
            row = rows[pk]
            assert (row.state, row.level) == (m.state, m.level)
            if m.state == PENDING:
                assert row.due_at == m.due_at
            assert approvals[pk] <= row.quorum
            assert events[pk] == m.events
            if m.state != PENDING:
                snapshot = (row.state, row.closed_at, row.level, approvals[pk])
                assert self.closed_seen.setdefault(pk, snapshot) == snapshot  # closed requests never change

    @invariant()
    def chain_verifies(self):
        assert audit.verify_database().ok


STATS = {"examples": 0, "steps": 0}


def test_approval_rules_match_the_model(request, workflow, agent, requester, approver, second_approver,
                                        senior_approver, outsider):
    requester.groups.add(Group.objects.get(name=Role.APPROVER))
    factories.scope(requester, workflow, Role.APPROVER)  # in scope and named: only four-eyes stops them
    World.people = {"alice": approver, "bob": second_approver, "sam": senior_approver, "rhea": requester,
                    "mallory": outsider}
    World.roles = {"alice": "approver", "bob": "approver", "sam": "senior", "rhea": "requester",
                   "mallory": "outsider"}
    World.agent, World.workflow = agent, workflow
    STATS.update(examples=0, steps=0)
    run_state_machine_as_test(ApprovalMachine, settings=settings(
        max_examples=20, stateful_step_count=15, deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture]))
    report(request, "IN-03", examples=STATS["examples"], steps=STATS["steps"], invariant_violations=0)

