"""The governed action's page, for release managers and administrators: change or remove the
action, edit its live and shadow rules (a compile error or a refusal is shown at the rule that has
it and nothing changes), and, for everyone who sees the page, a box to try a call on the rules
that writes nothing."""

from __future__ import annotations

import datetime as dt

import pytest
import time_machine
from django.urls import reverse

from approvals import services
from approvals.models import ActionRule, ApprovalRequest, Execution, ShadowDifference
from audit import log as audit
from audit.models import AuditEvent
from governance import services as governance
from governance.models import GovernedAction
from governance.permissions import Role
from tests import factories
from tests.governance.support import events_since, head_seq

pytestmark = pytest.mark.django_db

T0 = dt.datetime(2026, 3, 2, 10, 0, tzinfo=dt.UTC)  # a Monday, inside business hours


def url(name: str = "action", action: str = "pay_invoice") -> str:
    return reverse(f"approvals:{name}", args=["refund-agent", action])


@pytest.fixture
def release_manager(workflow):
    user = factories.make_user("rhea", role=Role.RELEASE_MANAGER)
    factories.scope(user, workflow)
    return user


@pytest.fixture
def action(workflow, admin_user):
    return governance.define_action(workflow.pk, actor=admin_user, name="pay_invoice", risk="high")


def rules_data(which: str = "live", rows: list[dict] | None = None, initial: int = 0, **extra) -> dict:
    data = {"which": which, f"{which}-TOTAL_FORMS": str(len(rows or [])), f"{which}-INITIAL_FORMS": str(initial),
            **extra}
    for i, row in enumerate(rows or []):
        for key, value in row.items():
            data[f"{which}-{i}-{key}"] = value
    return data


def state() -> dict:
    """What a refused form or the try-it box must leave as it was."""
    return {model.__name__: list(model.objects.order_by("pk").values()) for model in (
        GovernedAction, ActionRule, AuditEvent, ApprovalRequest, Execution, ShadowDifference)}


# -- the action -------------------------------------------------------------------------------

def test_a_release_manager_changes_the_actions_risk_and_quorum(client, release_manager, action):
    client.force_login(release_manager)
    assert "Change or remove this action" in client.get(url()).content.decode()
    start = head_seq()
    response = client.post(url("action_edit"), {"risk": "medium", "quorum": "2", "description": "Pay a supplier"})
    assert response.status_code == 302 and response["Location"] == url()
    action.refresh_from_db()
    assert (action.risk, action.quorum, action.description) == ("medium", 2, "Pay a supplier")
    [event] = events_since(start)
    assert event.action == "workflow.action_defined"


def test_a_refused_change_is_shown_at_its_field_and_changes_nothing(client, release_manager, action):
    client.force_login(release_manager)
    before = state()
    response = client.post(url("action_edit"), {"risk": "high", "quorum": "0"})
    assert response.status_code == 422
    assert response.context["edit_form"].errors["quorum"]
    assert 'id="change-action" open' in response.content.decode()
    assert state() == before


def test_removing_an_action_needs_the_confirmation_and_then_goes_through_the_service(client, release_manager, action,
                                                                                    workflow):
    client.force_login(release_manager)
    before = state()
    response = client.post(url("action_remove"), {})
    assert response.status_code == 422 and "Tick the box to confirm." in response.content.decode()
    assert state() == before
    start = head_seq()
    response = client.post(url("action_remove"), {"confirm": "on"})
    assert response.status_code == 302 and response["Location"] == workflow.get_absolute_url()
    assert not GovernedAction.objects.filter(pk=action.pk).exists()
    assert [e.action for e in events_since(start)] == ["workflow.action_removed"]


def test_an_approver_sees_no_forms_and_every_change_is_refused(client, approver, action):
    client.force_login(approver)
    page = client.get(url()).content.decode()
    assert "Change or remove this action" not in page and "Edit the live rules" not in page
    assert "Try it" in page
    before = state()
    assert client.post(url("action_edit"), {"risk": "low", "quorum": "1"}).status_code == 403
    assert client.post(url("action_remove"), {"confirm": "on"}).status_code == 403
    response = client.post(url("action_rules"), rules_data(rows=[{"condition": "true", "outcome": "allow"}]))
    assert response.status_code == 403
    assert "You may not change the rules of refund-agent." in response.content.decode()
    assert state() == before


@pytest.mark.parametrize("name", ["action_edit", "action_remove", "action_rules", "action_try"])
def test_the_forms_of_an_action_out_of_scope_are_404(client, outsider, action, name):
    outsider.groups.add(*outsider.groups.model.objects.filter(name=Role.RELEASE_MANAGER))
    client.force_login(outsider)
    before = state()
    response = client.post(url(name), {"risk": "low", "quorum": "1", "confirm": "on", "parameters": "{}"})
    assert response.status_code == 404
    assert state() == before


# -- the rules --------------------------------------------------------------------------------

def test_live_rules_are_saved_in_order_with_the_audit_event(client, release_manager, action):
    client.force_login(release_manager)
    start = head_seq()
    response = client.post(url("action_rules"), rules_data(rows=[
        {"condition": "double(params.amount) <= 50.0", "outcome": "allow", "ORDER": "2"},
        {"condition": "params.supplier == 'acme'", "outcome": "deny", "reason": "Acme is blocked.", "ORDER": "1"},
        {"condition": "double(params.amount) > 5000.0", "outcome": "approve", "quorum": "2",
         "approver_roles": ["senior_approver"], "ORDER": "3"},
        {"condition": "", "outcome": ""},  # an empty row is left out
    ]))
    assert response.status_code == 302 and response["Location"] == url() + "#live-h"
    saved = [(r.condition, r.outcome, r.quorum, r.approver_roles) for r in action.rules.order_by("position")]
    assert saved == [("params.supplier == 'acme'", "deny", None, []),
                     ("double(params.amount) <= 50.0", "allow", None, []),
                     ("double(params.amount) > 5000.0", "approve", 2, ["senior_approver"])]
    [event] = events_since(start)
    assert event.action == "action.rules_set" and audit.event_payload(event)["data"]["shadow"] is False
    page = client.get(url()).content.decode()
    assert "Rule 2: double(params.amount) &lt;= 50.0 → allow" in page


def test_a_rule_that_does_not_compile_shows_line_and_column_next_to_it(client, release_manager, action, admin_user):
    services.set_action_rules(action.pk, actor=admin_user, rules=[{"condition": "true", "outcome": "tier"}])
    client.force_login(release_manager)
    before = state()
    response = client.post(url("action_rules"), rules_data(rows=[
        {"condition": "params.amount <= 50", "outcome": "allow"},
        {"condition": "params.amount >", "outcome": "deny", "reason": "too much"},
        {"condition": "amount < 3", "outcome": "allow"},
    ]))
    assert response.status_code == 422
    forms = response.context["live_rules"].forms
    assert not forms[0].errors
    assert "line 1, column" in forms[1].errors["condition"][0]
    assert "Unknown variable 'amount'" in forms[2].errors["condition"][0]
    html = response.content.decode()
    rule_2 = html.split('id="live-rule-2"')[1].split("</fieldset>")[0]
    assert "line 1, column" in rule_2 and 'value="too much"' in rule_2  # what was typed stays
    assert state() == before


@pytest.mark.parametrize("row, field, message", [
    ({"condition": "true", "outcome": "deny"}, "reason", "a deny says why"),
    ({"condition": "true", "outcome": "allow", "quorum": "2"}, "quorum", "quorum only goes with an approve outcome"),
    ({"condition": "true", "outcome": "approve", "quorum": "1", "approver_roles": ["approver", "senior_approver"]},
     "quorum", "2 required roles need a quorum of at least 2"),
])
def test_a_rule_the_service_refuses_is_shown_at_its_field(client, release_manager, action, row, field, message):
    client.force_login(release_manager)
    before = state()
    rows = [{"condition": "params.amount <= 50", "outcome": "allow"}, row]
    response = client.post(url("action_rules"), rules_data(rows=rows))
    assert response.status_code == 422
    form = response.context["live_rules"].forms[1]
    assert message in " ".join(form.errors[field]), form.errors
    assert not form.errors[field][0].startswith("rules[")
    assert state() == before


def test_shadow_rules_are_edited_apart_from_the_live_ones(client, release_manager, action, admin_user):
    services.set_action_rules(action.pk, actor=admin_user, rules=[{"condition": "true", "outcome": "tier"}])
    client.force_login(release_manager)
    response = client.post(url("action_rules"), rules_data("shadow", rows=[
        {"condition": "double(params.amount) <= 20.0", "outcome": "allow"}]))
    assert response.status_code == 302
    assert [(r.shadow, r.condition) for r in action.rules.order_by("shadow", "position")] == [
        (False, "true"), (True, "double(params.amount) <= 20.0")]


def test_adding_a_rule_row_saves_nothing(client, release_manager, action):
    client.force_login(release_manager)
    before = state()
    response = client.post(url("action_rules"), rules_data(rows=[{"condition": "true", "outcome": "allow"}], add="1"))
    assert response.status_code == 200
    assert len(response.context["live_rules"].forms) == 2
    assert 'id="live-rule-2"' in response.content.decode()
    assert state() == before


def test_deleting_every_rule_leaves_the_tier_to_decide(client, release_manager, action, admin_user):
    services.set_action_rules(action.pk, actor=admin_user, rules=[{"condition": "true", "outcome": "allow"}])
    client.force_login(release_manager)
    response = client.post(url("action_rules"), rules_data(
        rows=[{"condition": "true", "outcome": "allow", "DELETE": "on"}], initial=1))
    assert response.status_code == 302 and not action.rules.exists()


# -- try it -----------------------------------------------------------------------------------

@pytest.fixture
def ruled(action, admin_user):
    services.set_action_rules(action.pk, actor=admin_user, rules=[
        {"condition": "double(params.amount) <= 50.0", "outcome": "allow"},
        {"condition": "evidence.confidence < 0.5", "outcome": "deny", "reason": "Not sure enough."},
    ])
    services.set_action_rules(action.pk, actor=admin_user, shadow=True, rules=[
        {"condition": "double(params.amount) <= 10.0", "outcome": "allow"}])
    return action


def test_trying_a_call_names_the_rule_that_decides_and_writes_nothing(client, approver, ruled, workflow):
    factories.make_service_account("invoice-bot", owner=approver, workflows=[workflow])
    client.force_login(approver)
    before = state()
    with time_machine.travel(T0, tick=False):
        response = client.post(url("action_try"), {"parameters": '{"amount": 20}', "agent": "invoice-bot"})
    assert response.status_code == 200
    trial = response.context["trial"]
    assert (trial.verdict.decision, trial.verdict.code, trial.verdict.rule.number) == ("allow", "allowed_by_rule", 1)
    html = response.content.decode()
    assert "allowed_by_rule" in html and "Rule 1: double(params.amount) &lt;= 50.0 → allow" in html
    assert "params.amount = 20" in html
    assert "The shadow rules would answer differently: <strong>pending</strong>" in html
    assert state() == before


def test_evidence_and_confidence_reach_the_rules(client, approver, ruled):
    client.force_login(approver)
    response = client.post(url("action_try"), {"parameters": '{"amount": 80}', "evidence": '{"ticket": "T-1"}',
                                               "confidence": "0.3"})
    trial = response.context["trial"]
    assert (trial.verdict.decision, trial.verdict.code) == ("deny", "denied_by_rule")
    assert "Rule 2: Not sure enough." in response.content.decode()


def test_when_no_rule_holds_the_tier_decides(client, approver, ruled):
    client.force_login(approver)
    response = client.post(url("action_try"), {"parameters": '{"amount": 80}', "confidence": "0.9"})
    trial = response.context["trial"]
    assert (trial.verdict.decision, trial.verdict.code, trial.verdict.rule) == ("pending", "approval_required", None)
    assert "No rule decided: the tier did" in response.content.decode()


def test_a_rule_that_cannot_be_decided_for_the_call_denies(client, approver, ruled):
    client.force_login(approver)
    response = client.post(url("action_try"), {"parameters": '{"amount": "lots"}'})
    assert response.context["trial"].verdict.code == "rule_error"


def test_a_paused_workflow_is_said_before_the_rules(client, approver, ruled, workflow, containment_owner):
    governance.pause_workflow(workflow.pk, actor=containment_owner, reason="invoices look wrong")
    client.force_login(approver)
    response = client.post(url("action_try"), {"parameters": '{"amount": 20}'})
    assert "refund-agent is paused (invoices look wrong)" in response.content.decode()


@pytest.mark.parametrize("data, field, message", [
    ({"parameters": '{"amount": 20'}, "parameters", "Not JSON: Expecting ',' delimiter at line 1, column 14."),
    ({"parameters": "[1, 2]"}, "parameters", "Write the parameters as a JSON object"),
    ({"parameters": "{}", "evidence": "yes"}, "evidence", "Not JSON"),
    ({"parameters": "{}", "confidence": "1.5"}, "confidence", "less than or equal to 1"),
])
def test_a_call_that_cannot_be_tried_is_shown_at_its_field(client, approver, ruled, data, field, message):
    client.force_login(approver)
    response = client.post(url("action_try"), data)
    assert response.status_code == 422
    assert message in " ".join(response.context["try_form"].errors[field])


def test_htmx_gets_the_try_it_box_alone(client, approver, ruled):
    client.force_login(approver)
    response = client.post(url("action_try"), {"parameters": '{"amount": 20}'}, headers={"HX-Request": "true"})
    html = response.content.decode()
    assert html.lstrip().startswith('<section class="card" id="try-it"') and "<html" not in html
