"""The rollout pages: plan editor, plan page, containment panel, context tag form."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext

from approvals import services as approval_services
from audit.models import AuditEvent
from core import clock
from rollouts import proposals, tags
from rollouts.models import ContextTag, RolloutAction, RolloutPlan

pytestmark = pytest.mark.django_db


def client_for(user) -> Client:
    client = Client()
    client.force_login(user)
    return client


def editor_data(**overrides) -> dict:
    data = {
        "workflow": "refund-agent", "name": "Refund prompt v7", "release_version": "refund-v7",
        "stable_version": "refund-v6", "fallback_mode": "human_review", "executor": "flag", "webhook_url": "",
        "notes": "",
        "rings-TOTAL_FORMS": "2", "rings-INITIAL_FORMS": "0",
        "rings-0-segment_kind": "internal_team", "rings-0-segment_value": "payments-ops",
        "rings-0-exposure_percent": "100", "rings-0-min_soak_minutes": "30",
        "rings-1-segment_kind": "traffic_slice", "rings-1-segment_value": "all", "rings-1-exposure_percent": "10",
        "rings-1-min_soak_minutes": "60", "rings-1-approval_point": "on",
        "criteria-TOTAL_FORMS": "1", "criteria-INITIAL_FORMS": "0",
        "criteria-0-metric": "cost_per_task", "criteria-0-operator": "lte", "criteria-0-threshold": "0.04",
        "criteria-0-window_minutes": "30", "criteria-0-min_samples": "20",
        "triggers-TOTAL_FORMS": "2", "triggers-INITIAL_FORMS": "0",
        "triggers-0-metric": "latency_p95_ms", "triggers-0-operator": "gt", "triggers-0-threshold": "1200",
        "triggers-0-sustained_minutes": "5", "triggers-0-min_samples": "3", "triggers-0-severity": "critical",
        "triggers-1-metric": "", "triggers-1-operator": "", "triggers-1-threshold": "",
        "triggers-1-sustained_minutes": "", "triggers-1-min_samples": "", "triggers-1-severity": "",
    }
    return {**data, **overrides}


def test_a_release_manager_writes_a_plan_in_the_editor(release_manager):
    client = client_for(release_manager)
    assert client.get("/rollouts/new/").status_code == 200
    response = client.post("/rollouts/new/", editor_data())
    plan = RolloutPlan.objects.get()
    assert response.status_code == 302 and response["Location"] == plan.get_absolute_url()
    assert [r.segment for r in plan.rings.all()] == ["internal_team:payments-ops", "traffic_slice:all"]
    assert plan.triggers.get().threshold == 1200 and plan.rings.get(order=1).approval_point
    page = client.get(plan.get_absolute_url()).content.decode()
    assert "Launch readiness" in page and "No owner for: pause, narrow" in page


def test_the_editor_re_renders_invalid_input_with_422_and_saves_nothing(release_manager):
    client = client_for(release_manager)
    response = client.post("/rollouts/new/", editor_data(**{"rings-0-exposure_percent": "0",
                                                            "triggers-0-threshold": "NaN"}))
    assert response.status_code == 422
    page = response.content.decode()
    assert "Ensure this value is greater than or equal to 1." in page
    assert "Enter a number." in page or "Enter a finite number." in page
    assert not RolloutPlan.objects.exists()


def test_add_a_row_keeps_what_was_typed_and_saves_nothing(release_manager):
    response = client_for(release_manager).post("/rollouts/new/", editor_data(add="rings"))
    assert response.status_code == 200 and 'name="rings-2-segment_value"' in response.content.decode()
    assert not RolloutPlan.objects.exists()


def test_people_without_the_rollout_scope_cannot_open_the_editor_of_a_plan(live_plan, bystander, make_plan):
    draft = make_plan(release_version="prompt-v3")
    assert client_for(bystander).get(f"/rollouts/{draft.pk}/edit/").status_code == 404


def test_the_plan_page_shows_rings_signals_tags_and_the_owners_actions(live_plan, owner, release_manager):
    tags.create_context_tag(actor=release_manager, workflow=live_plan.workflow, plan=live_plan,
                            kind="expected_latency_increase", expected_change_percent=15,
                            ends_at=clock.now() + timedelta(hours=3), reason="migration")
    page = client_for(owner).get(live_plan.get_absolute_url()).content.decode()
    for text in ("Ring 0", "internal team", "latency_p95_ms &gt; 800 sustained for 2 min", "inconclusive",
                 "expected_latency_increase: 15%", "Open ring 1", "Pause", "Engage fallback", "Roll back"):
        assert text in page, text


def test_a_person_without_the_duty_sees_no_containment_action(live_plan, bystander):
    page = client_for(bystander).get(live_plan.get_absolute_url()).content.decode()
    assert "You hold no containment duty" in page and "Roll back</button>" not in page


def test_htmx_polling_gets_the_live_partial_only(live_plan, owner):
    response = client_for(owner).get(live_plan.get_absolute_url(), headers={"HX-Request": "true"})
    html = response.content.decode()
    assert html.lstrip().startswith('<div id="live"') and "<html" not in html
    assert response["Vary"] and "HX-Request" in response["Vary"]


def test_pause_from_the_page_with_htmx_answers_in_place(live_plan, owner):
    client = client_for(owner)
    response = client.post(f"/rollouts/{live_plan.pk}/actions/pause/", {"reason": "quality dip"},
                           headers={"HX-Request": "true"})
    assert response.status_code == 200
    html = response.content.decode()
    assert 'id="containment"' in html and 'hx-swap-oob="true"' in html and "Pause: succeeded" in html
    live_plan.refresh_from_db()
    assert live_plan.state == "paused"


def test_a_refused_action_answers_403_in_place_and_changes_nothing(live_plan, bystander):
    response = client_for(bystander).post(f"/rollouts/{live_plan.pk}/actions/rollback/", {"reason": "x"},
                                          headers={"HX-Request": "true"})
    assert response.status_code == 403
    assert "Only an owner of the rollback duty of refund-agent may do this." in response.content.decode()
    live_plan.refresh_from_db()
    assert live_plan.state == "active"


def test_a_missing_reason_is_422(live_plan, owner):
    response = client_for(owner).post(f"/rollouts/{live_plan.pk}/actions/rollback/", {"reason": ""})
    assert response.status_code == 422 and "Say why the release is rolled back" in response.content.decode()


def test_starting_an_unready_plan_from_the_page_names_what_is_missing(make_plan, release_manager):
    plan = make_plan(triggers=[])
    response = client_for(release_manager).post(f"/rollouts/{plan.pk}/launch/start/")
    assert response.status_code == 409
    assert "Missing: Rollback triggers" in response.content.decode()
    plan.refresh_from_db()
    assert plan.state == "draft"


def test_the_context_tag_form(live_plan, release_manager):
    client = client_for(release_manager)
    url = f"/rollouts/{live_plan.pk}/tags/new/"
    assert client.get(url).status_code == 200
    bad = client.post(url, {"kind": "expected_latency_increase", "hours": "4", "reason": "migration"})
    assert bad.status_code == 422 and "Give the expected change in percent" in bad.content.decode()
    ok = client.post(url, {"kind": "expected_latency_increase", "expected_change_percent": "15", "hours": "4",
                           "reason": "the 23:00 migration changes query patterns"})
    assert ok.status_code == 302
    tag = ContextTag.objects.get()
    assert tag.label == "expected_latency_increase: 15%" and tag.plan == live_plan and tag.author == release_manager
    assert AuditEvent.objects.filter(action="rollout.context_tag_added").count() == 1


def test_the_navigation_links_to_rollouts(release_manager):
    page = client_for(release_manager).get("/rollouts/").content.decode()
    assert 'href="/rollouts/"' in page and "Rollouts" in page


def _gated_rollback(plan: RolloutPlan) -> RolloutAction:
    return proposals.propose_action(plan.pk, kind="rollback", handling="gate", tier=3, origin="trigger",
                                    evidence={"metric": "latency_p95_ms"}, reason="p95 above 800 ms").action


def _reject(action: RolloutAction, owner) -> None:
    approval_services.record_decision(action.approval_request_id, actor=owner, verdict="reject",
                                      justification="noise from a load test")
    proposals.handle_approval_outcome(action.approval_request_id)


def test_the_plan_page_shows_each_actions_approval_request_and_its_state_without_a_query_each(live_plan, owner):
    client = client_for(owner)
    rejected = _gated_rollback(live_plan)
    _reject(rejected, owner)
    pending = _gated_rollback(live_plan)
    client.get(live_plan.get_absolute_url())  # caches warmed (session, content types, permissions)
    with CaptureQueriesContext(connection) as two:
        page = client.get(live_plan.get_absolute_url()).content.decode()
    assert f'Approval request #{pending.approval_request_id}</a> <span class="muted">pending, due' in page
    assert f'request #{rejected.approval_request_id}</a> <span class="muted">rejected</span>' in page
    _reject(pending, owner)
    _gated_rollback(live_plan)
    with CaptureQueriesContext(connection) as three:
        client.get(live_plan.get_absolute_url())
    assert len(three) == len(two)


def test_the_editor_writes_a_triggers_breach_and_no_data_settings_and_blank_ones_take_the_defaults(release_manager):
    client = client_for(release_manager)
    response = client.post("/rollouts/new/", editor_data(**{
        "triggers-0-breach_statistic": "mean", "triggers-0-flap_breaches": "2", "triggers-0-flap_windows": "4",
        "triggers-0-lateness_seconds": "60", "triggers-0-no_data_minutes": "15", "triggers-0-on_no_data": "rollback",
    }))
    assert response.status_code == 302, response.content.decode()[-2000:]
    trigger = RolloutPlan.objects.get().triggers.get()
    assert (trigger.breach_statistic, trigger.breach_share, trigger.flap_breaches, trigger.flap_windows) == (
        "mean", 50, 2, 4)
    assert (trigger.allowed_lateness, trigger.no_data_after, trigger.on_no_data) == (
        timedelta(minutes=1), timedelta(minutes=15), "rollback")
    assert trigger.reask_worse_percent == 25
    event = AuditEvent.objects.get(action="rollout.plan_created")
    assert "window mean beyond; flapping 2 of 4 windows; late after 1 min; no data after 15 min → rollback" in \
        event.data["triggers"][0]


def test_the_editor_refuses_signals_lost_before_the_sustained_for_time_naming_the_field(release_manager):
    response = client_for(release_manager).post("/rollouts/new/", editor_data(**{
        "triggers-0-no_data_minutes": "2", "triggers-0-flap_breaches": "6"}))
    assert response.status_code == 422
    page = response.content.decode()
    assert "Signals can only be lost after at least the sustained-for time." in page
    assert "No more breaching windows than windows." in page
    assert not RolloutPlan.objects.exists()
