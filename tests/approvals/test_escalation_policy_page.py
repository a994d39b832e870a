"""A workflow's escalation policies on a page: everyone in scope reads them (and the defaults they
fall back on); release managers and administrators set one per mode and hours through
define_policy. A refused policy is shown at the level and field it concerns and changes nothing."""

from __future__ import annotations

import pytest
from django.urls import reverse

from approvals.models import EscalationLevel, EscalationPolicy
from audit import log as audit
from audit.models import AuditEvent
from governance.permissions import Role
from tests import factories
from tests.governance.support import events_since, head_seq

pytestmark = pytest.mark.django_db

URL = reverse("approvals:escalation", args=["refund-agent"])


@pytest.fixture
def release_manager(workflow):
    user = factories.make_user("rhea", role=Role.RELEASE_MANAGER)
    factories.scope(user, workflow)
    return user


def policy_data(levels: list[dict], **overrides) -> dict:
    data = {"mode": "gate", "hours": "any", "terminal_action": "reject",
            "levels-TOTAL_FORMS": str(len(levels)), "levels-INITIAL_FORMS": "0", **overrides}
    for i, level in enumerate(levels):
        for key, value in {"unit": "60", **level}.items():
            data[f"levels-{i}-{key}"] = value
    return data


def state() -> dict:
    return {model.__name__: list(model.objects.order_by("pk").values()) for model in (
        EscalationPolicy, EscalationLevel, EscalationLevel.groups.through, EscalationLevel.people.through, AuditEvent)}


def test_the_page_shows_the_defaults_a_workflow_falls_back_on(client, approver):
    client.force_login(approver)
    html = client.get(URL).content.decode()
    assert "None yet: the defaults below apply." in html
    assert "Level 1: approver, containment owner" in html and "Level 2: senior approver" in html
    assert "Set a policy" not in html  # approvers read, they do not set


def test_a_release_manager_sets_the_workflows_gate_policy(client, release_manager, workflow, senior_approver):
    client.force_login(release_manager)
    assert "Set a policy" in client.get(URL).content.decode()
    start = head_seq()
    response = client.post(URL, policy_data([
        {"groups": ["approver"], "timeout": "10"},
        {"groups": ["senior_approver"], "people": "sam", "timeout": "1", "unit": "3600", "replaces": "on"},
    ]))
    policy = EscalationPolicy.objects.get(workflow=workflow)
    assert response.status_code == 302 and response["Location"].endswith(f"?mode=gate&hours=any#policy-{policy.pk}")
    levels = [(lv.timeout_seconds, [g.name for g in lv.groups.all()], [p.username for p in lv.people.all()],
               lv.replaces_previous) for lv in policy.levels.order_by("position")]
    assert levels == [(600, ["approver"], [], False), (3600, ["senior_approver"], ["sam"], True)]
    [event] = events_since(start)
    assert event.action == "approval.policy_defined"
    assert audit.event_payload(event)["data"]["levels"][1]["people"] == ["sam"]
    html = client.get(URL + "?mode=gate&hours=any").content.decode()
    assert "Change the gate policy (any time)" in html and 'value="sam"' in html
    assert "for 1 h" in html and "for 10 min" in html


@pytest.mark.parametrize("levels, overrides, where, message", [
    ([{"groups": ["approver"], "timeout": "10"}], {"terminal_action": "proceed"}, "terminal_action",
     "A gate cannot proceed on its own"),
    ([{"groups": [], "people": "", "timeout": "10"}], {}, "level", "name a role group or people"),
    ([{"groups": ["approver"], "timeout": "8", "unit": "86400"}], {}, "timeout", "between 1 second and 7 days"),
    ([{"groups": ["approver"], "people": "nobody", "timeout": "10"}], {}, "people", "No active person named nobody"),
    ([{"groups": ["approver"], "timeout": "10", "replaces": "on"}], {}, "replaces", "no previous level to replace"),
    ([], {}, "levels", "between 1 and 10 levels"),
])
def test_a_refused_policy_is_shown_where_it_is_wrong_and_changes_nothing(client, release_manager, levels,
                                                                        overrides, where, message):
    client.force_login(release_manager)
    before = state()
    response = client.post(URL, policy_data(levels, **overrides))
    assert response.status_code == 422
    form, formset = response.context["form"], response.context["levels"]
    if where == "terminal_action":
        errors = form.errors[where]
    elif where == "levels":
        errors = formset.non_form_errors()
    elif where == "level":
        errors = formset.forms[0].non_field_errors()
    else:
        errors = formset.forms[0].errors[where]
    assert message in " ".join(errors), (form.errors, formset.errors, formset.non_form_errors())
    assert state() == before


def test_adding_a_level_row_saves_nothing(client, release_manager):
    client.force_login(release_manager)
    before = state()
    response = client.post(URL, policy_data([{"groups": ["approver"], "timeout": "10"}], add="1"))
    assert response.status_code == 200 and len(response.context["levels"].forms) == 2
    assert state() == before


def test_an_approver_cannot_set_a_policy(client, approver):
    client.force_login(approver)
    before = state()
    response = client.post(URL, policy_data([{"groups": ["approver"], "timeout": "10"}]))
    assert response.status_code == 403
    assert "You may not change escalation policies." in response.content.decode()
    assert state() == before


def test_the_policies_of_a_workflow_out_of_scope_are_404(client, outsider, workflow):
    outsider.groups.add(*outsider.groups.model.objects.filter(name=Role.RELEASE_MANAGER))
    client.force_login(outsider)
    before = state()
    assert client.get(URL).status_code == 404
    assert client.post(URL, policy_data([{"groups": ["approver"], "timeout": "10"}])).status_code == 404
    assert state() == before
