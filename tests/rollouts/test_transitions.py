"""Every plan transition through its service: the state, the audit event, the refusals."""

from __future__ import annotations

from datetime import timedelta

import pytest

from audit.models import AuditEvent
from core import clock
from core.errors import TransitionRefused
from governance import services as governance_services
from rollouts import containment, executors, plans, proposals, reviews, selectors, signals, tags
from rollouts.models import ActionReview, RolloutAction, RolloutPlan
from tests.rollouts.conftest import plan_spec

pytestmark = pytest.mark.django_db
State = RolloutPlan.State


def audit_actions(plan: RolloutPlan) -> list[str]:
    return list(AuditEvent.objects.filter(subject_type="rollouts.rolloutplan", subject_id=str(plan.pk))
                .order_by("seq").values_list("action", flat=True))


def refused(code: str, call, *args, **kwargs) -> TransitionRefused:
    with pytest.raises(TransitionRefused) as info:
        call(*args, **kwargs)
    assert info.value.code == code, info.value.message
    return info.value


def test_a_release_manager_writes_a_plan_and_it_is_audited(make_plan):
    plan = make_plan()
    assert plan.state == State.DRAFT
    assert [r.segment for r in plan.rings.all()] == ["internal_team:support-ops", "customer_group:partners",
                                                     "traffic_slice:all"]
    assert audit_actions(plan) == ["rollout.plan_created"]
    event = AuditEvent.objects.get(action="rollout.plan_created")
    assert event.actor_label == "rhea" and "latency_p95_ms > 800 " in event.data["triggers"][0]


def test_someone_without_the_rollout_scope_cannot_write_plans(workflow, bystander, make_plan):
    refused("forbidden", plans.create_plan, actor=bystander, workflow=workflow, **plan_spec())
    assert not RolloutPlan.objects.exists()


def test_an_invalid_ring_is_refused_naming_the_field(make_plan):
    with pytest.raises(TransitionRefused) as info:
        make_plan(rings=[{"segment_kind": "internal_team", "segment_value": "ops", "exposure_percent": 150}])
    assert info.value.field == "rings[0].exposure_percent"
    assert not RolloutPlan.objects.exists()


@pytest.mark.parametrize(("setting", "field", "message"), [
    ({"no_data_after": timedelta(minutes=1)}, "triggers[0]", "No data after must be at least the sustained-for time."),
    ({"on_no_data": "explode"}, "triggers[0].on_no_data", "Value 'explode' is not a valid choice."),
    ({"breach_share": 0}, "triggers[0].breach_share", "Ensure this value is greater than or equal to 1."),
    ({"flap_breaches": 6}, "triggers[0]", "no more breaching windows than windows"),
])
def test_a_trigger_with_bad_breach_or_no_data_settings_is_refused_naming_the_field(make_plan, setting, field, message):
    triggers = plan_spec()["triggers"]
    triggers[0].update(setting)
    with pytest.raises(TransitionRefused) as info:
        make_plan(triggers=triggers)
    assert info.value.field == field and message in info.value.message
    assert not RolloutPlan.objects.exists()


def test_starting_an_unready_plan_is_refused_with_every_missing_item_named(make_plan, release_manager):
    plan = make_plan(triggers=[], fallback_mode="")
    refusal = refused("not_ready", plans.start_rollout, plan.pk, actor=release_manager)
    for missing in ("Rollback triggers", "Fallback mode", "Latency threshold", "Containment owner for every duty"):
        assert missing in refusal.message
    assert "Expansion criteria" not in refusal.message
    plan.refresh_from_db()
    assert plan.state == State.DRAFT and audit_actions(plan) == ["rollout.plan_created"]


def test_readiness_names_the_duties_without_an_owner(make_plan, release_manager, workflow, containment_owner,
                                                     admin_user):
    governance_services.assign_containment(workflow.pk, actor=admin_user, user=containment_owner, duty="pause")
    plan = make_plan()
    refusal = refused("not_ready", plans.mark_ready, plan.pk, actor=release_manager)
    assert "No owner for: narrow, fallback, rollback, escalate, approve expansion." in refusal.message


def test_mark_ready_then_start_opens_ring_0(make_plan, owner, release_manager):
    plan = plans.mark_ready(make_plan().pk, actor=release_manager)
    assert plan.state == State.READY
    plan = plans.start_rollout(plan.pk, actor=release_manager)
    assert (plan.state, plan.current_ring) == (State.ACTIVE, 0)
    assert audit_actions(plan) == ["rollout.plan_created", "rollout.plan_ready", "rollout.started"]


def test_editing_a_ready_plan_returns_it_to_draft(make_plan, owner, release_manager):
    plan = plans.mark_ready(make_plan().pk, actor=release_manager)
    spec = plan_spec(release_version="prompt-v3")
    plan = plans.update_plan(plan.pk, actor=release_manager, **spec)
    assert plan.state == State.DRAFT and plan.release_version == "prompt-v3"
    event = AuditEvent.objects.filter(action="rollout.plan_updated").get()
    assert event.data["changes"]["release_version"] == {"from": "prompt-v2", "to": "prompt-v3"}


def test_a_workflow_has_one_live_rollout_at_a_time(live_plan, make_plan, release_manager):
    second = make_plan(release_version="prompt-v3")
    refusal = refused("conflict", plans.start_rollout, second.pk, actor=release_manager)
    assert "already has a live rollout (prompt-v2, active)" in refusal.message


def test_pause_and_resume_by_the_owner_of_the_pause_duty(live_plan, owner):
    action = containment.pause_rollout(live_plan.pk, actor=owner, reason="quality dip under review")
    assert action.plan.state == State.PAUSED and action.kind == "pause" and action.state == "succeeded"
    containment.resume_rollout(live_plan.pk, actor=owner, reason="false alarm")
    live_plan.refresh_from_db()
    assert live_plan.state == State.ACTIVE
    assert audit_actions(live_plan)[-2:] == ["rollout.paused", "rollout.resumed"]


@pytest.mark.parametrize("action", ["pause", "narrow", "expand", "fallback", "rollback"])
def test_a_containment_owner_without_the_duty_is_refused_and_nothing_changes(live_plan, bystander, action):
    kwargs = {"reason": "trying"}
    if action == "narrow":
        kwargs["exposure_percent"] = 10
    refusal = refused("forbidden", containment.CONTAINMENT[action], live_plan.pk, actor=bystander, **kwargs)
    assert refusal.message.startswith("Only an owner of the")
    live_plan.refresh_from_db()
    assert live_plan.state == State.ACTIVE and live_plan.current_ring == 0
    assert not RolloutAction.objects.exists()
    assert audit_actions(live_plan)[-1] == "rollout.started"


def test_pausing_needs_a_reason(live_plan, owner):
    refusal = refused("invalid", containment.pause_rollout, live_plan.pk, actor=owner, reason="  ")
    assert refusal.field == "reason"


def test_expand_then_narrow_back_a_ring_or_lower_exposure(live_plan, owner):
    containment.expand_rollout(live_plan.pk, actor=owner, reason="partners look good")
    live_plan.refresh_from_db()
    assert live_plan.current_ring == 1
    containment.narrow_rollout(live_plan.pk, actor=owner, reason="partner complaint", to_ring=0)
    live_plan.refresh_from_db()
    assert live_plan.current_ring == 0
    containment.narrow_rollout(live_plan.pk, actor=owner, reason="halve exposure", exposure_percent=50)
    live_plan.refresh_from_db()
    assert live_plan.exposure_override == 50
    refused("invalid", containment.narrow_rollout, live_plan.pk, actor=owner, reason="x", exposure_percent=60)
    assert audit_actions(live_plan)[-3:] == ["rollout.ring_opened", "rollout.narrowed", "rollout.narrowed"]


def test_complete_only_at_the_last_ring(live_plan, owner):
    refusal = refused("conflict", containment.complete_rollout, live_plan.pk, actor=owner)
    assert "ring 0 of 2" in refusal.message
    containment.expand_rollout(live_plan.pk, actor=owner)
    containment.expand_rollout(live_plan.pk, actor=owner)
    containment.complete_rollout(live_plan.pk, actor=owner, reason="all rings healthy")
    live_plan.refresh_from_db()
    assert live_plan.state == State.COMPLETED and live_plan.closed_at is not None
    assert audit_actions(live_plan)[-1] == "rollout.completed"


def test_fallback_is_executed_then_left_by_the_fallback_owner(live_plan, owner):
    action = containment.engage_fallback(live_plan.pk, actor=owner, reason="answers are slow", mode="simpler_route")
    assert action.state == "scheduled" and action.executor == "flag"
    live_plan.refresh_from_db()
    assert live_plan.state == State.ACTIVE  # nothing changes until the executor has run
    executors.run(action.pk)
    live_plan.refresh_from_db()
    assert (live_plan.state, live_plan.active_fallback_mode) == (State.FALLBACK, "simpler_route")
    action.refresh_from_db()
    assert action.state == "succeeded" and action.attempts == 1
    containment.resume_rollout(live_plan.pk, actor=owner, reason="latency back to normal")
    live_plan.refresh_from_db()
    assert live_plan.state == State.ACTIVE and live_plan.active_fallback_mode == ""
    assert audit_actions(live_plan)[-4:] == ["rollout.fallback_requested", "rollout.action_started",
                                             "rollout.fallback_engaged", "rollout.resumed"]


def test_roll_back_from_fallback(live_plan, owner):
    executors.run(containment.engage_fallback(live_plan.pk, actor=owner, reason="slow").pk)
    action = containment.roll_back(live_plan.pk, actor=owner, reason="still slow in fallback")
    refused("conflict", containment.roll_back, live_plan.pk, actor=owner, reason="twice")
    executors.run(action.pk)
    live_plan.refresh_from_db()
    assert live_plan.state == State.ROLLED_BACK
    assert audit_actions(live_plan)[-3:] == ["rollout.rollback_requested", "rollout.action_started",
                                             "rollout.rolled_back"]
    refused("conflict", containment.resume_rollout, live_plan.pk, actor=owner)


def test_a_service_account_acts_for_its_owner_only_on_duties_the_owner_holds(live_plan, agent, release_manager,
                                                                              workflow, admin_user):
    refused("forbidden", containment.pause_rollout, live_plan.pk, actor=agent, reason="canary failing")
    governance_services.assign_containment(workflow.pk, actor=admin_user, user=release_manager, duty="pause",
                                           position="backup")
    action = containment.pause_rollout(live_plan.pk, actor=agent, reason="canary failing")
    assert action.requested_by_service == agent and action.origin == "agent"
    assert AuditEvent.objects.filter(action="rollout.paused").get().actor_label == "deploy-bot"


def test_a_second_executor_run_changes_nothing(live_plan, owner):
    action = containment.roll_back(live_plan.pk, actor=owner, reason="bad release")
    executors.run(action.pk)
    assert executors.run(action.pk) is None
    action.refresh_from_db()
    assert action.attempts == 1
    assert audit_actions(live_plan).count("rollout.rolled_back") == 1


def test_every_transition_writes_exactly_its_audit_event(make_plan, owner, release_manager, workflow):
    """The guard against a new transition without an audit event: walk them all, in order."""
    first = AuditEvent.objects.order_by("-seq").values_list("seq", flat=True).first()
    plan = make_plan()
    plans.update_plan(plan.pk, actor=release_manager, **plan_spec(notes="v2 prompt"))
    plans.mark_ready(plan.pk, actor=release_manager)
    plans.start_rollout(plan.pk, actor=release_manager)
    containment.pause_rollout(plan.pk, actor=owner, reason="look")
    containment.resume_rollout(plan.pk, actor=owner)
    containment.expand_rollout(plan.pk, actor=owner)
    containment.narrow_rollout(plan.pk, actor=owner, reason="back", to_ring=0)
    tag = tags.create_context_tag(actor=release_manager, workflow=workflow, plan=plan, kind="migration_window",
                                  ends_at=clock.now() + timedelta(hours=1), reason="db migration")
    tags.withdraw_context_tag(tag.pk, actor=release_manager, reason="migration done")
    executors.run(containment.engage_fallback(plan.pk, actor=owner, reason="slow").pk)
    containment.resume_rollout(plan.pk, actor=owner)
    plan.refresh_from_db()
    quiet = selectors.evaluate(plan, clock.now() + timedelta(hours=1)).triggers[0]  # an hour without a sample
    loss = signals.record_signals_lost(plan.pk, trigger_id=quiet.rule_id, check=quiet, tier=2)
    signals.restore_signals(loss.pk, check=quiet)
    containment.resume_rollout(plan.pk, actor=owner)
    proposal = proposals.propose_action(plan.pk, kind="rollback", handling="execute", tier=1, origin="trigger",
                                        evidence={"rule": "latency_p95_ms > 800"})
    executors.run(proposal.action.pk)
    review = ActionReview.objects.get(action=proposal.action)
    reviews.review_action(review.pk, actor=owner, verdict="false_positive", reason="known_change",
                          note="the migration was expected")
    actions = list(AuditEvent.objects.filter(seq__gt=first or 0, action__startswith="rollout.")
                   .order_by("seq").values_list("action", flat=True))
    assert actions == [
        "rollout.plan_created", "rollout.plan_updated", "rollout.plan_ready", "rollout.started",
        "rollout.paused", "rollout.resumed", "rollout.ring_opened", "rollout.narrowed",
        "rollout.context_tag_added", "rollout.context_tag_withdrawn",
        "rollout.fallback_requested", "rollout.action_started", "rollout.fallback_engaged", "rollout.resumed",
        "rollout.signals_lost", "rollout.paused", "rollout.signals_restored", "rollout.resumed",
        "rollout.action_proposed", "rollout.action_started", "rollout.rolled_back", "rollout.action_reviewed",
    ]


def test_lost_signals_are_recorded_once_and_restored_once(live_plan):
    quiet = selectors.evaluate(live_plan, clock.now() + timedelta(hours=1)).triggers[0]
    loss = signals.record_signals_lost(live_plan.pk, trigger_id=quiet.rule_id, check=quiet, tier=2)
    before = AuditEvent.objects.count()
    refused("conflict", signals.record_signals_lost, live_plan.pk, trigger_id=quiet.rule_id, check=quiet, tier=2)
    assert AuditEvent.objects.count() == before and live_plan.signal_losses.count() == 1
    signals.restore_signals(loss.pk, check=quiet)
    refused("conflict", signals.restore_signals, loss.pk, check=quiet)
    assert AuditEvent.objects.filter(action="rollout.signals_restored").count() == 1


def test_a_review_is_filed_once_by_a_containment_owner_with_a_reason_for_false_positives(live_plan, owner,
                                                                                          bystander):
    proposal = proposals.propose_action(live_plan.pk, kind="rollback", handling="execute", tier=1, origin="trigger",
                                        evidence={})
    review = ActionReview.objects.get(action=proposal.action)
    refused("forbidden", reviews.review_action, review.pk, actor=bystander, verdict="correct")
    refused("invalid", reviews.review_action, review.pk, actor=owner, verdict="false_positive")
    reviews.review_action(review.pk, actor=owner, verdict="correct", note="real regression")
    refusal = refused("already_decided", reviews.review_action, review.pk, actor=owner, verdict="correct")
    assert refusal.message == "olivia already reviewed this action."
    review.refresh_from_db()
    assert (review.verdict, review.reason, review.reviewed_by) == ("correct", "", owner)
