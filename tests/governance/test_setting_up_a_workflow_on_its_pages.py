"""Setting a workflow up on its pages: a new workflow, its governed actions, containment owners,
people's scope and roles, service accounts and tokens. Each form changes what it should through
the audited service; refused input is shown where the person can act (422, or 403 for a change
their role does not allow) and changes nothing; a workflow out of scope is a 404."""

from __future__ import annotations

import pytest
from django.contrib.auth.models import User
from django.urls import reverse

from audit import log as audit
from governance.models import ApiToken, ContainmentAssignment, GovernedAction, ServiceAccount, Workflow
from governance.permissions import APPROVE, MANAGE_ROLLOUTS, VIEW, Role, perm
from governance.selectors import has_role
from tests import factories
from tests.governance.support import database_state, events_since, head_seq

pytestmark = pytest.mark.django_db

NEW = reverse("governance:workflow_create")


def _url(name: str, workflow: Workflow | str, **kwargs) -> str:
    return reverse(f"governance:{name}", kwargs={"slug": getattr(workflow, "slug", workflow), **kwargs})


def _new_workflow(**overrides) -> dict:
    return {"slug": "invoice-agent", "name": "Invoice agent", "description": "", "environment": "production",
            "owning_team": "Finance", "autonomy_tier": "2", "off_hours_tier": "", "timezone": "Europe/Berlin",
            "business_days": ["0", "1", "2", "3", "4"], "business_start": "08:00", "business_end": "18:00",
            **overrides}


@pytest.fixture
def release_manager(workflow):
    user = factories.make_user("rhea", role=Role.RELEASE_MANAGER)
    factories.scope(user, workflow)
    return user


# -- a new workflow ---------------------------------------------------------------------------

def test_the_administrator_who_creates_a_workflow_sees_it_afterwards(client, admin_user):
    client.force_login(admin_user)
    assert client.get(NEW).status_code == 200
    start = head_seq()
    response = client.post(NEW, _new_workflow())
    workflow = Workflow.objects.get(slug="invoice-agent")
    assert response.status_code == 302 and response["Location"] == workflow.get_absolute_url()
    assert [e.action for e in events_since(start)] == ["workflow.created"]
    assert (workflow.timezone, workflow.autonomy_tier, workflow.business_start.hour) == ("Europe/Berlin", 2, 8)
    page = client.get(workflow.get_absolute_url())
    assert page.status_code == 200 and "Invoice agent" in page.content.decode()
    assert "invoice-agent" in client.get(reverse("governance:workflow_list")).content.decode()


def test_administrators_see_every_workflow_not_only_those_they_created(client, workflow):
    other_admin = factories.make_admin("grace")
    client.force_login(other_admin)
    assert client.get(workflow.get_absolute_url()).status_code == 200


def test_a_release_manager_creates_a_workflow_and_manages_it(client, release_manager):
    client.force_login(release_manager)
    assert client.post(NEW, _new_workflow()).status_code == 302
    workflow = Workflow.objects.get(slug="invoice-agent")
    assert release_manager.has_perm(perm(MANAGE_ROLLOUTS), workflow)
    assert 'action="/workflows/invoice-agent/actions/"' in client.get(workflow.get_absolute_url()).content.decode()


@pytest.mark.parametrize("overrides, field, message", [
    ({"slug": "Invoice Agent"}, "slug", "Use lowercase letters"),
    ({"timezone": "Mars/Olympus_Mons"}, "timezone", "is not a known time zone"),
    ({"slug": "refund-agent"}, "slug", "already exists"),
    ({"business_start": "18:00", "business_end": "09:00"}, None, "Business hours must end after they start"),
])
def test_a_refused_new_workflow_shows_the_error_at_its_field_and_creates_nothing(
        client, admin_user, workflow, overrides, field, message):
    client.force_login(admin_user)
    before = database_state()
    response = client.post(NEW, _new_workflow(**overrides))
    assert response.status_code == 422
    form = response.context["form"]
    errors = " ".join(form.errors.get(field or "business_end", []) + form.non_field_errors())
    assert message in errors
    assert message in response.content.decode().replace("&#x27;", "'")
    assert database_state() == before


def test_people_without_the_role_cannot_open_the_new_workflow_page(client, approver):
    client.force_login(approver)
    before = database_state()
    assert client.get(NEW).status_code == 403
    assert client.post(NEW, _new_workflow()).status_code == 403
    assert database_state() == before


# -- governed actions -------------------------------------------------------------------------

def test_declaring_an_action_on_the_workflow_page_leads_to_its_page(client, release_manager, workflow):
    client.force_login(release_manager)
    start = head_seq()
    response = client.post(_url("action_create", workflow),
                           {"name": "pay_invoice", "risk": "high", "quorum": "2", "description": "Pay a supplier"})
    assert response.status_code == 302
    assert response["Location"] == reverse("approvals:action", args=[workflow.slug, "pay_invoice"])
    action = GovernedAction.objects.get(workflow=workflow, name="pay_invoice")
    assert (action.risk, action.quorum, action.description) == ("high", 2, "Pay a supplier")
    assert [e.action for e in events_since(start)] == ["workflow.action_defined"]


@pytest.mark.parametrize("data, field", [
    ({"name": "Pay Invoice", "risk": "high", "quorum": "1"}, "name"),
    ({"name": "pay_invoice", "risk": "extreme", "quorum": "1"}, "risk"),
    ({"name": "pay_invoice", "risk": "high", "quorum": "12"}, "quorum"),
])
def test_a_refused_action_is_shown_on_the_workflow_page_and_declares_nothing(
        client, release_manager, workflow, data, field):
    client.force_login(release_manager)
    before = database_state()
    response = client.post(_url("action_create", workflow), data)
    assert response.status_code == 422
    assert response.context["action_form"].errors[field]
    assert "<details class=\"setup\" open>" in response.content.decode()
    assert database_state() == before


def test_an_action_already_declared_is_not_changed_from_the_declare_form(client, release_manager, workflow,
                                                                          admin_user):
    from governance import services

    services.define_action(workflow.pk, actor=admin_user, name="pay_invoice", risk="low")
    client.force_login(release_manager)
    before = database_state()
    response = client.post(_url("action_create", workflow), {"name": "pay_invoice", "risk": "high", "quorum": "1"})
    assert response.status_code == 422
    assert "already declared" in response.content.decode()
    assert database_state() == before


def test_an_approver_cannot_declare_actions(client, approver, workflow):
    client.force_login(approver)
    page = client.get(workflow.get_absolute_url()).content.decode()
    assert "Declare an action" not in page
    before = database_state()
    response = client.post(_url("action_create", workflow), {"name": "pay_invoice", "risk": "high", "quorum": "1"})
    assert response.status_code == 403
    assert "You may not change the governed actions" in response.content.decode()
    assert database_state() == before


# -- containment owners -----------------------------------------------------------------------

def test_owners_are_assigned_and_removed_on_the_containment_page(client, release_manager, workflow,
                                                                 containment_owner):
    client.force_login(release_manager)
    start = head_seq()
    response = client.post(_url("containment", workflow),
                           {"user": "olivia", "duty": "rollback", "position": "primary"})
    assert response.status_code == 302
    assignment = ContainmentAssignment.objects.get(workflow=workflow)
    assert (assignment.user, assignment.duty) == (containment_owner, "rollback")
    page = client.get(_url("containment", workflow)).content.decode()
    assert "Remove olivia from Rollback" in page and page.count("no owner") == 5
    response = client.post(_url("containment_remove", workflow, pk=assignment.pk))
    assert response.status_code == 302 and not ContainmentAssignment.objects.exists()
    assert [e.action for e in events_since(start)] == ["containment.assigned", "containment.removed"]


def test_a_second_primary_is_refused_at_the_form_and_changes_nothing(client, release_manager, workflow,
                                                                     containment_owner, admin_user):
    from governance import services

    services.assign_containment(workflow.pk, actor=admin_user, user=containment_owner, duty="pause")
    client.force_login(release_manager)
    before = database_state()
    response = client.post(_url("containment", workflow), {"user": "rhea", "duty": "pause", "position": "primary"})
    assert response.status_code == 409
    assert "olivia is already the primary pause owner" in response.content.decode()
    response = client.post(_url("containment", workflow), {"user": "nobody", "duty": "guard", "position": "primary"})
    assert response.status_code == 422
    assert set(response.context["form"].errors) == {"user", "duty"}
    assert database_state() == before


def test_the_containment_page_returns_to_the_plan_it_was_opened_from(client, release_manager, workflow):
    client.force_login(release_manager)
    url = _url("containment", workflow) + "?next=/rollouts/7/"
    assert 'href="/rollouts/7/"' in client.get(url).content.decode()
    response = client.post(url, {"user": "rhea", "duty": "escalate", "position": "primary"})
    assert response["Location"] == url
    assert 'href="https://evil.example/"' not in client.get(
        _url("containment", workflow) + "?next=https://evil.example/").content.decode()


def test_an_approver_reads_the_owners_but_cannot_change_them(client, approver, workflow):
    client.force_login(approver)
    page = client.get(_url("containment", workflow)).content.decode()
    assert "Assign an owner" not in page
    before = database_state()
    response = client.post(_url("containment", workflow), {"user": "alice", "duty": "pause", "position": "primary"})
    assert response.status_code == 403
    assert database_state() == before


# -- scope ------------------------------------------------------------------------------------

def test_an_administrator_gives_changes_and_takes_scope(client, admin_user, workflow):
    bob = factories.make_user("bob", role=Role.APPROVER)
    client.force_login(admin_user)
    start = head_seq()
    assert client.post(_url("scope", workflow), {"user": "bob", "permissions": [VIEW, APPROVE]}).status_code == 302
    assert bob.has_perm(perm(APPROVE), workflow)
    page = client.get(_url("scope", workflow)).content.decode()
    assert 'id="person-%d"' % bob.pk in page
    bob = User.objects.get(pk=bob.pk)  # a fresh permission cache
    assert client.post(_url("scope", workflow), {"user": "bob", "permissions": [VIEW]}).status_code == 302
    bob = User.objects.get(pk=bob.pk)
    assert bob.has_perm(perm(VIEW), workflow) and not bob.has_perm(perm(APPROVE), workflow)
    assert client.post(_url("scope", workflow), {"user": "bob"}).status_code == 302
    bob = User.objects.get(pk=bob.pk)
    assert not bob.has_perm(perm(VIEW), workflow)
    events = events_since(start)
    assert [e.action for e in events] == ["scope.granted", "scope.revoked", "scope.revoked"]
    assert [audit.event_payload(e)["data"]["permissions"] for e in events] == [
        sorted([VIEW, APPROVE]), [APPROVE], [VIEW]]


def test_giving_scope_without_a_permission_is_refused_and_changes_nothing(client, admin_user, workflow):
    factories.make_user("bob", role=Role.APPROVER)
    client.force_login(admin_user)
    before = database_state()
    response = client.post(_url("scope", workflow), {"user": "bob"})
    assert response.status_code == 422
    assert "Choose permissions among" in response.content.decode()
    assert response.context["form"].errors["permissions"]
    response = client.post(_url("scope", workflow), {"user": "bob", "permissions": ["own_everything"]})
    assert response.status_code == 422
    assert database_state() == before


def test_only_administrators_change_scope(client, release_manager, workflow):
    client.force_login(release_manager)
    page = client.get(_url("scope", workflow)).content.decode()
    assert "Give a person scope" not in page and "rhea" in page
    before = database_state()
    response = client.post(_url("scope", workflow), {"user": "rhea", "permissions": [VIEW, APPROVE]})
    assert response.status_code == 403
    assert "Only administrators grant scope." in response.content.decode()
    assert database_state() == before


# -- roles ------------------------------------------------------------------------------------

def test_an_administrator_sets_a_persons_roles(client, admin_user, approver):
    client.force_login(admin_user)
    page = client.get(reverse("governance:people"), {"q": "ali"}).content.decode()
    assert 'id="person-%d"' % approver.pk in page and "ada" not in page.split("<h1>")[1].split("</table>")[0]
    start = head_seq()
    response = client.post(reverse("governance:person_roles", args=[approver.pk]) + "?q=ali",
                           {"roles": [Role.APPROVER, Role.SENIOR_APPROVER]})
    assert response.status_code == 302 and response["Location"].endswith(f"?q=ali#person-{approver.pk}")
    assert has_role(User.objects.get(pk=approver.pk), Role.SENIOR_APPROVER)
    [event] = events_since(start)
    assert event.action == "user.roles_changed"
    assert audit.event_payload(event)["data"]["added"] == [Role.SENIOR_APPROVER]


def test_an_unknown_role_is_refused_and_changes_nothing(client, admin_user, approver):
    client.force_login(admin_user)
    before = database_state()
    response = client.post(reverse("governance:person_roles", args=[approver.pk]), {"roles": ["overlord"]})
    assert response.status_code == 422
    assert "overlord is not one of the available choices" in response.content.decode()
    assert database_state() == before


def test_only_administrators_open_the_people_page(client, release_manager, approver):
    client.force_login(release_manager)
    before = database_state()
    assert client.get(reverse("governance:people")).status_code == 403
    response = client.post(reverse("governance:person_roles", args=[approver.pk]), {"roles": [Role.ADMINISTRATOR]})
    assert response.status_code == 403
    assert database_state() == before


# -- service accounts and tokens --------------------------------------------------------------

def test_an_administrator_creates_a_service_account_and_issues_a_token_shown_once(client, admin_user, workflow,
                                                                                  release_manager):
    client.force_login(admin_user)
    start = head_seq()
    response = client.post(_url("service_accounts", workflow),
                           {"name": "invoice-bot", "owner": "rhea", "description": "pays invoices"})
    assert response.status_code == 302
    account = ServiceAccount.objects.get(name="invoice-bot")
    assert list(account.workflows.all()) == [workflow] and account.owner == release_manager
    response = client.post(_url("token_issue", workflow, pk=account.pk), {"label": "production"})
    assert response.status_code == 200 and response["Cache-Control"] == "no-store"
    raw = response.context["issued"].raw
    assert raw in response.content.decode()
    token = ApiToken.objects.get()
    assert token.digest == ApiToken.digest_of(raw) and token.label == "production"
    assert raw not in client.get(_url("service_accounts", workflow)).content.decode()
    assert client.post(_url("token_revoke", workflow, pk=account.pk, token_id=token.pk)).status_code == 302
    token.refresh_from_db()
    assert token.is_revoked
    assert [e.action for e in events_since(start)] == ["service_account.created", "token.issued", "token.revoked"]


def test_a_taken_service_account_name_is_refused_at_its_field(client, admin_user, workflow, release_manager):
    factories.make_service_account("invoice-bot", owner=release_manager, workflows=[workflow])
    client.force_login(admin_user)
    before = database_state()
    response = client.post(_url("service_accounts", workflow), {"name": "invoice-bot", "owner": "rhea"})
    assert response.status_code == 422
    assert "already exists" in " ".join(response.context["form"].errors["name"])
    assert database_state() == before


def test_only_administrators_issue_tokens(client, release_manager, workflow):
    account = factories.make_service_account("invoice-bot", owner=release_manager, workflows=[workflow])
    client.force_login(release_manager)
    assert "Issue a token" not in client.get(_url("service_accounts", workflow)).content.decode()
    before = database_state()
    response = client.post(_url("token_issue", workflow, pk=account.pk), {"label": "mine"})
    assert response.status_code == 403
    assert "Only administrators issue tokens." in response.content.decode()
    assert database_state() == before


def test_a_service_account_of_another_workflow_is_404(client, admin_user, workflow, other_workflow):
    account = factories.make_service_account("other-bot", owner=admin_user, workflows=[other_workflow])
    client.force_login(admin_user)
    before = database_state()
    assert client.post(_url("token_issue", workflow, pk=account.pk)).status_code == 404
    assert database_state() == before


# -- out of scope -----------------------------------------------------------------------------

@pytest.mark.parametrize("route, kwargs, data", [
    ("action_create", {}, {"name": "pay_invoice", "risk": "high", "quorum": "1"}),
    ("containment", {}, {"user": "mallory", "duty": "pause", "position": "primary"}),
    ("scope", {}, {"user": "mallory", "permissions": [VIEW]}),
    ("service_accounts", {}, {"name": "sneaky-bot", "owner": "mallory"}),
])
def test_setup_forms_of_a_workflow_out_of_scope_are_404_and_change_nothing(client, outsider, workflow, route,
                                                                          kwargs, data):
    outsider.groups.add(*outsider.groups.model.objects.filter(name=Role.RELEASE_MANAGER))
    client.force_login(outsider)
    before = database_state()
    assert client.get(_url(route, workflow, **kwargs)).status_code in (404, 405)
    assert client.post(_url(route, workflow, **kwargs), data).status_code == 404
    assert database_state() == before
