"""Every rollout transition writes exactly the audit events it promises, in the same transaction.

Walks each transition through the services (in the manner of zulip's test_audit_log and
tests/approvals/test_audit_actions.py) and checks that together they write every action the
rollouts modules list in their AUDIT_ACTIONS, that each module lists exactly the events its code
writes, and that every transition allowed by `RolloutPlan.TRANSITIONS` and
`RolloutAction.TRANSITIONS` was taken, each action transition with its event naming the states
it left and entered. A new transition without an event, or an event nobody lists or tests,
fails here.
"""

from __future__ import annotations

import ast
import datetime as dt
import importlib
import pkgutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import time_machine
from django.db import transaction

import rollouts
from approvals import services as approval_services
from approvals.models import ApprovalRequest
from audit import log as audit
from audit.models import AuditEvent
from core import clock
from core.errors import TransitionRefused
from rollouts import (
    actions,
    containment,
    execution,
    executors,
    metrics,
    plans,
    proposals,
    providers,
    retention,
    reviews,
    selectors,
    signals,
)
from rollouts import tags as rollout_tags
from rollouts.models import ActionReview, RolloutAction, RolloutPlan, Signal
from tests.rollouts.conftest import plan_spec

pytestmark = pytest.mark.django_db

T0 = dt.datetime(2026, 3, 2, 10, 0, tzinfo=dt.UTC)
OURS = ("rollout.", "metric.")
UNUSED_HOOK = "http://127.0.0.1:9/hook"  # attempts are recorded through the services: nothing is sent


def source(module: Any) -> str:
    return Path(module.__file__).read_text()


def audit_modules() -> dict[str, Any]:
    """Every rollouts module that writes audit events, by name."""
    found = {}
    for info in pkgutil.iter_modules(rollouts.__path__):
        module = importlib.import_module(f"rollouts.{info.name}")
        if not info.ispkg and ("audit.record(" in source(module) or hasattr(module, "AUDIT_ACTIONS")):
            found[info.name] = module
    return found


def all_audit_actions() -> set[str]:
    return {name for module in audit_modules().values() for name in module.AUDIT_ACTIONS}


def pairs(transitions: dict[str, frozenset[str]]) -> set[tuple[str, str]]:
    return {(str(old), str(new)) for old, targets in transitions.items() for new in targets}


class Walk:
    def __init__(self, traveller) -> None:
        self.traveller = traveller
        self.seen: set[str] = set()
        self.plan_moves: set[tuple[str, str]] = set()
        self.action_moves: set[tuple[str, str]] = set()
        self.mark = AuditEvent.objects.order_by("-seq").values_list("seq", flat=True).first() or 0

    def new(self, subject=None) -> list[str]:
        """The rollouts' events written since the last call, in order (approvals' own are left out)."""
        events = list(AuditEvent.objects.filter(seq__gt=self.mark).order_by("seq"))
        self.mark = events[-1].seq if events else self.mark
        ours = [e for e in events if e.action.startswith(OURS)]
        if subject is not None:
            assert {(e.subject_type, e.subject_id) for e in ours} == {audit.describe_subject(subject)}
        for event in ours:
            self.seen.add(event.action)
            if "action_state" in event.data:
                self.action_moves.add((event.data["action_state_from"], event.data["action_state"]))
        return [e.action for e in ours]

    def do(self, plan: RolloutPlan, call: Callable, *args: Any, **kwargs: Any) -> Any:
        """Call a service and note the plan's state change, if any."""
        before = RolloutPlan.objects.get(pk=plan.pk).state
        result = call(*args, **kwargs)
        after = RolloutPlan.objects.get(pk=plan.pk).state
        if after != before:
            self.plan_moves.add((before, after))
        return result

    def attempt(self, plan: RolloutPlan, action: RolloutAction, outcome: str = "ok", status: int | None = 200):
        """One executor attempt recorded through the services, as executors.run does, without the I/O."""
        ticket = self.do(plan, execution.begin_attempt, action.pk, worker="walk")
        assert ticket is not None
        return self.do(plan, execution.record_action_attempt, ticket.attempt_id, outcome=outcome, http_status=status)


@pytest.fixture
def walk(owner, release_manager):
    with time_machine.travel(T0, tick=False) as traveller:
        yield Walk(traveller)


def state(obj) -> str:
    obj.refresh_from_db()
    return obj.state


def test_every_transition_writes_its_audit_events(walk, make_plan, owner, release_manager, workflow, admin_user):
    # -- a plan is written, made ready, edited back to draft, started; a person contains it --------
    plan = make_plan()
    assert walk.new(plan) == ["rollout.plan_created"]
    walk.do(plan, plans.mark_ready, plan.pk, actor=release_manager)
    assert walk.new(plan) == ["rollout.plan_ready"]
    walk.do(plan, plans.update_plan, plan.pk, actor=release_manager, **plan_spec(notes="the v2 prompt"))
    assert walk.new(plan) == ["rollout.plan_updated"]
    walk.do(plan, plans.start_rollout, plan.pk, actor=release_manager)  # from draft: readiness, then the start
    assert walk.new(plan) == ["rollout.plan_ready", "rollout.started"]
    walk.do(plan, containment.pause_rollout, plan.pk, actor=owner, reason="quality dip")
    assert walk.new(plan) == ["rollout.paused"]
    walk.do(plan, containment.resume_rollout, plan.pk, actor=owner, reason="false alarm")
    assert walk.new(plan) == ["rollout.resumed"]

    # A person opening the ring makes the proposal waiting for approval moot: cancelled, audited.
    moot = proposals.propose_action(plan.pk, kind="expand", handling="gate", tier=3, origin="criteria", evidence={})
    assert walk.new(plan) == ["rollout.action_proposed"]
    walk.do(plan, containment.expand_rollout, plan.pk, actor=owner, reason="partners look good")
    assert walk.new(plan) == ["rollout.action_cancelled", "rollout.ring_opened"]
    assert state(moot.action) == "cancelled"
    assert ApprovalRequest.objects.get(pk=moot.action.approval_request_id).state == "cancelled"

    approved = proposals.propose_action(plan.pk, kind="expand", handling="gate", tier=3, origin="criteria",
                                        evidence={}).action
    assert walk.new(plan) == ["rollout.action_proposed"]
    approval_services.record_decision(approved.approval_request_id, actor=owner, verdict="approve")
    proposals.handle_approval_outcome(approved.approval_request_id)
    assert walk.new(plan) == ["rollout.action_approved", "rollout.ring_opened"]
    assert state(approved) == "succeeded"
    walk.do(plan, containment.narrow_rollout, plan.pk, actor=owner, reason="partner complaint", to_ring=1)
    assert walk.new(plan) == ["rollout.narrowed"]
    walk.do(plan, containment.expand_rollout, plan.pk, actor=owner)
    assert walk.new(plan) == ["rollout.ring_opened"]

    fallback = walk.do(plan, containment.engage_fallback, plan.pk, actor=owner, reason="answers are slow")
    assert walk.new(plan) == ["rollout.fallback_requested"]
    walk.do(plan, executors.run, fallback.pk)
    assert walk.new(plan) == ["rollout.action_started", "rollout.fallback_engaged"]
    walk.do(plan, containment.resume_rollout, plan.pk, actor=owner)  # flag: left at once
    assert walk.new(plan) == ["rollout.resumed"]
    walk.do(plan, containment.complete_rollout, plan.pk, actor=owner, reason="all rings healthy")
    assert walk.new(plan) == ["rollout.completed"]

    # -- a webhook plan: retries, leaving the fallback through the executor, a rollback winning ------
    plan = make_plan(release_version="prompt-v3", executor="webhook", webhook_url=UNUSED_HOOK)
    walk.do(plan, plans.mark_ready, plan.pk, actor=release_manager)
    walk.do(plan, plans.start_rollout, plan.pk, actor=release_manager)
    assert walk.new(plan) == ["rollout.plan_created", "rollout.plan_ready", "rollout.started"]
    walk.do(plan, containment.pause_rollout, plan.pk, actor=owner, reason="look closer")
    fallback = containment.engage_fallback(plan.pk, actor=owner, reason="answers are slow")
    assert walk.new(plan) == ["rollout.paused", "rollout.fallback_requested"]
    retry = walk.attempt(plan, fallback, outcome="retryable_error", status=503)
    assert walk.new(plan) == ["rollout.action_started", "rollout.action_retry"]
    walk.traveller.shift(dt.timedelta(seconds=retry.retry_in))
    walk.attempt(plan, fallback)  # the second attempt changes no state; the effect is audited
    assert walk.new(plan) == ["rollout.fallback_engaged"]
    leave = walk.do(plan, containment.resume_rollout, plan.pk, actor=owner, reason="latency back to normal")
    assert walk.new(plan) == ["rollout.fallback_exit_requested"]
    walk.attempt(plan, leave)
    assert walk.new(plan) == ["rollout.action_started", "rollout.resumed"]
    walk.attempt(plan, containment.engage_fallback(plan.pk, actor=owner, reason="slow again"))
    assert walk.new(plan) == ["rollout.fallback_requested", "rollout.action_started", "rollout.fallback_engaged"]
    leave = containment.resume_rollout(plan.pk, actor=owner, reason="looks fine")
    rollback = containment.roll_back(plan.pk, actor=owner, reason="it is not fine")
    assert walk.new(plan) == ["rollout.fallback_exit_requested", "rollout.rollback_requested"]
    walk.attempt(plan, rollback)
    assert walk.new(plan) == ["rollout.action_started", "rollout.rolled_back"]
    assert walk.do(plan, execution.begin_attempt, leave.pk) is None  # the plan can no longer take it
    assert walk.new(plan) == ["rollout.action_cancelled"]
    assert state(leave) == "cancelled"

    # -- an attempt that fails; one whose plan moved on while it ran -------------------------------
    plan = make_plan(release_version="prompt-v4", executor="webhook", webhook_url=UNUSED_HOOK)
    walk.do(plan, plans.mark_ready, plan.pk, actor=release_manager)
    walk.do(plan, plans.start_rollout, plan.pk, actor=release_manager)
    walk.new()
    walk.attempt(plan, containment.engage_fallback(plan.pk, actor=owner, reason="slow"), outcome="failed",
                 status=401)
    assert walk.new(plan) == ["rollout.fallback_requested", "rollout.action_started", "rollout.action_failed"]
    running = containment.engage_fallback(plan.pk, actor=owner, reason="slow, second try")
    ticket = execution.begin_attempt(running.pk, worker="walk")
    rollback = containment.roll_back(plan.pk, actor=owner, reason="rolling back instead")
    walk.attempt(plan, rollback)
    assert walk.new(plan) == ["rollout.fallback_requested", "rollout.action_started", "rollout.rollback_requested",
                              "rollout.action_started", "rollout.rolled_back"]
    execution.record_action_attempt(ticket.attempt_id, outcome="ok", http_status=200)
    assert walk.new(plan) == ["rollout.action_executed"]
    assert state(running) == "succeeded" and state(plan) == "rolled_back"

    # -- proposals by the triggers: rejected, signals lost and back, unanswered, approved ----------
    plan = make_plan(release_version="prompt-v5")
    walk.do(plan, plans.mark_ready, plan.pk, actor=release_manager)
    walk.do(plan, plans.start_rollout, plan.pk, actor=release_manager)
    walk.new()
    rejected = proposals.propose_action(plan.pk, kind="rollback", handling="gate", tier=3, origin="trigger",
                                        evidence={}, reason="p95 above 800 ms").action
    approval_services.record_decision(rejected.approval_request_id, actor=owner, verdict="reject",
                                      justification="the cache is warming up")
    proposals.handle_approval_outcome(rejected.approval_request_id)
    assert walk.new(plan) == ["rollout.action_proposed", "rollout.action_cancelled"]
    plan.refresh_from_db()
    quiet = selectors.evaluate(plan, clock.now() + dt.timedelta(hours=1)).triggers[0]  # an hour without a sample
    loss = walk.do(plan, signals.record_signals_lost, plan.pk, trigger_id=quiet.rule_id, check=quiet, tier=2)
    assert walk.new(plan) == ["rollout.signals_lost", "rollout.paused"]
    signals.restore_signals(loss.pk, check=quiet)
    assert walk.new(plan) == ["rollout.signals_restored"]
    walk.do(plan, containment.resume_rollout, plan.pk, actor=owner, reason="samples are back")
    walk.new()
    unanswered = proposals.propose_action(plan.pk, kind="rollback", handling="gate", tier=3, origin="trigger",
                                          evidence={}, reason="p95 above 800 ms").action
    walk.traveller.shift(dt.timedelta(minutes=10, seconds=1))
    assert proposals.reach_deadline(unanswered.pk)[0] == "escalated"
    walk.traveller.shift(dt.timedelta(minutes=20))
    walk.do(plan, proposals.reach_deadline, unanswered.pk)  # silence is not a rejection: the plan pauses
    assert walk.new(plan) == ["rollout.action_proposed", "rollout.action_cancelled", "rollout.paused"]
    approved = proposals.propose_action(plan.pk, kind="rollback", handling="gate", tier=3, origin="trigger",
                                        evidence={}, reason="p95 above 800 ms").action
    approval_services.record_decision(approved.approval_request_id, actor=owner, verdict="approve")
    proposals.handle_approval_outcome(approved.approval_request_id)
    assert walk.new(plan) == ["rollout.action_proposed", "rollout.action_approved"]
    assert state(approved) == "scheduled"
    walk.do(plan, executors.run, approved.pk)
    assert walk.new(plan) == ["rollout.action_started", "rollout.rolled_back"]

    # -- tier 1: the criteria open a ring with nobody before it; a containment owner reviews it ------
    plan = make_plan(release_version="prompt-v6")
    walk.do(plan, plans.mark_ready, plan.pk, actor=release_manager)
    walk.do(plan, plans.start_rollout, plan.pk, actor=release_manager)
    walk.new()
    expanded = proposals.propose_action(plan.pk, kind="expand", handling="execute", tier=1, origin="criteria",
                                        evidence={}).action
    assert walk.new(plan) == ["rollout.action_proposed", "rollout.ring_opened"]
    review = ActionReview.objects.get(action=expanded)
    reviews.review_action(review.pk, actor=owner, verdict="correct", note="partners were ready")
    assert walk.new(plan) == ["rollout.action_reviewed"]
    tag = rollout_tags.create_context_tag(actor=release_manager, workflow=workflow, plan=plan, kind="migration_window",
                                          ends_at=T0 + dt.timedelta(hours=4), reason="db migration")
    assert walk.new(tag) == ["rollout.context_tag_added"]
    rollout_tags.withdraw_context_tag(tag.pk, actor=release_manager, reason="migration done")
    assert walk.new(tag) == ["rollout.context_tag_withdrawn"]
    metric = metrics.define_metric(actor=admin_user, slug="refund_accuracy", label="Refund accuracy")
    assert walk.new(metric) == ["metric.defined"]
    # -- a metric's provider: set (each change too) and removed, each its own action -------------------
    prometheus = {"kind": "prometheus", "url": "https://prometheus.example", "query": "up"}
    providers.set_metric_provider(actor=admin_user, slug="refund_accuracy", provider=prometheus)
    providers.set_metric_provider(actor=admin_user, slug="refund_accuracy", provider={**prometheus, "query": "up2"})
    assert walk.new(metric) == ["metric.provider_set", "metric.provider_set"]
    providers.set_metric_provider(actor=admin_user, slug="refund_accuracy", provider=None)
    assert walk.new(metric) == ["metric.provider_removed"]
    # -- retention: samples older than SIGNAL_RETENTION_DAYS become rollups; the run is recorded -------
    long_ago = T0 - dt.timedelta(days=400)
    Signal.objects.create(plan=plan, metric=metric, observed_at=long_ago, value=1.0, received_at=long_ago)
    retention.retain_signals()
    assert walk.new() == ["rollout.signals_retained"]

    assert walk.seen == all_audit_actions()
    assert walk.plan_moves >= pairs(RolloutPlan.TRANSITIONS)
    assert walk.action_moves == pairs(RolloutAction.TRANSITIONS)
    assert audit.verify_database().ok


def test_each_module_lists_exactly_the_audit_actions_it_writes():
    """Read from the code: `audit.record(actor, "<action>", …)` and `move_action(…, event="<action>")`;
    only move_action itself records an event its caller names."""
    dynamic = []
    for name, module in audit_modules().items():
        written = set()
        for node in ast.walk(ast.parse(source(module))):
            if not isinstance(node, ast.Call):
                continue
            callee = ast.unparse(node.func)
            if callee == "audit.record" and len(node.args) >= 2:
                action = node.args[1]
                if isinstance(action, ast.Constant):
                    written.add(action.value)
                else:
                    dynamic.append((name, ast.unparse(action)))
            for keyword in node.keywords:
                if callee.endswith("move_action") and keyword.arg == "event":
                    written.add(keyword.value.value)
        assert set(module.AUDIT_ACTIONS) == written, name
    assert dynamic == [("actions", "event")]


def test_an_action_changes_state_only_as_its_transitions_allow_and_a_refusal_writes_nothing(
        walk, live_plan, owner, bystander):
    done = containment.pause_rollout(live_plan.pk, actor=owner, reason="look")
    walk.new()
    for old, targets in RolloutAction.TRANSITIONS.items():
        for new in RolloutAction.State.values:
            assert RolloutAction(state=old).can_become(new) == (new in targets)
    with pytest.raises(TransitionRefused) as info, transaction.atomic():
        actions.move_action(done, "cancelled", actor=owner, event="rollout.action_cancelled")
    assert info.value.code == "conflict"
    assert state(done) == "succeeded"

    refusals = [
        lambda: containment.pause_rollout(live_plan.pk, actor=owner, reason="twice"),
        lambda: containment.complete_rollout(live_plan.pk, actor=owner),
        lambda: containment.roll_back(live_plan.pk, actor=bystander, reason="not my duty"),
        lambda: plans.update_plan(live_plan.pk, actor=owner, **plan_spec()),
        lambda: proposals.propose_action(live_plan.pk, kind="expand", handling="gate", tier=3, origin="criteria",
                                         evidence={}),
    ]
    for refused in refusals:
        with pytest.raises(TransitionRefused):
            refused()
    assert proposals.apply_approval_outcome(done.pk, request_state="approved").state == "succeeded"
    assert execution.begin_attempt(done.pk) is None
    assert walk.new() == []
    assert state(live_plan) == "paused"
