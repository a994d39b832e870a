"""No unaudited privilege change: each change the security review found in the Django admin
(superuser / staff / active flags, roles, workflow scope, service-account owner / workflows /
active, tokens, governed actions, containment duties) is made by a service and writes its audit
event; a non-superuser administrator cannot grant superuser status, and a refusal changes nothing."""

from __future__ import annotations

import pytest
from django.contrib.auth.models import Group, User
from django.urls import reverse

from audit import log as audit
from governance import services
from governance.models import ApiToken, ContainmentAssignment, GovernedAction, ServiceAccount
from governance.permissions import APPROVE, CONTAIN, VIEW, Role, perm
from tests import factories
from tests.governance.support import database_state, events_since, head_seq, refused

pytestmark = pytest.mark.django_db

ONLY_SUPERUSERS = "Only a superuser grants or removes superuser status."


@pytest.fixture
def root(db):
    return factories.make_user("root", is_superuser=True, is_staff=True)


@pytest.fixture
def account(admin_user, approver, workflow):
    return factories.make_service_account("refund-bot", owner=approver, workflows=[workflow])


def data_of(event) -> dict:
    return audit.event_payload(event)["data"]


def chain_verifies() -> bool:
    return audit.verify_database().ok


def user_form(user: User, **changes) -> dict:
    """The user change form as a browser posts it: ticked checkboxes only."""
    fields = {"username": user.username, "first_name": user.first_name, "last_name": user.last_name,
              "email": user.email, "is_active": user.is_active, "is_staff": user.is_staff,
              "is_superuser": user.is_superuser, "groups": list(user.groups.values_list("pk", flat=True))}
    fields.update(changes)
    form = {}
    for name, value in fields.items():
        if value is True:
            form[name] = "on"
        elif value is not False:
            form[name] = value
    return form


def change_user(client, user: User, **changes):
    return client.post(reverse("admin:auth_user_change", args=[user.pk]), user_form(user, **changes), follow=True)


def role_ids(*roles: Role) -> list[int]:
    return list(Group.objects.filter(name__in=[str(r) for r in roles]).values_list("pk", flat=True))


# --- users: flags and roles ---------------------------------------------------------------------

def test_a_superuser_grants_and_removes_superuser_status_with_an_event_each(client, root, approver):
    client.force_login(root)
    start = head_seq()
    assert change_user(client, approver, is_superuser=True).status_code == 200
    assert User.objects.get(pk=approver.pk).is_superuser
    assert change_user(client, User.objects.get(pk=approver.pk), is_superuser=False).status_code == 200
    assert not User.objects.get(pk=approver.pk).is_superuser

    granted, removed = events_since(start)
    assert (granted.action, granted.actor_label, granted.subject_id) == ("user.flags_changed", "root", str(approver.pk))
    assert data_of(granted) == {"user": "alice", "changes": {"is_superuser": {"from": False, "to": True}}}
    assert data_of(removed) == {"user": "alice", "changes": {"is_superuser": {"from": True, "to": False}}}
    assert chain_verifies()


def test_an_administrator_changes_staff_and_active_flags_in_one_event(client, admin_user, approver):
    client.force_login(admin_user)
    start = head_seq()
    response = change_user(client, approver, is_staff=True, is_active=False)
    assert response.status_code == 200
    approver.refresh_from_db()
    assert approver.is_staff and not approver.is_active

    [event] = events_since(start)
    assert (event.action, event.actor_label) == ("user.flags_changed", "ada")
    assert data_of(event) == {"user": "alice", "changes": {"is_active": {"from": True, "to": False},
                                                           "is_staff": {"from": False, "to": True}}}
    assert chain_verifies()


def test_an_administrator_changes_roles_with_the_added_and_removed_roles_in_the_event(client, admin_user, approver):
    client.force_login(admin_user)
    start = head_seq()
    change_user(client, approver, groups=role_ids(Role.SENIOR_APPROVER, Role.CONTAINMENT_OWNER))
    assert set(approver.groups.values_list("name", flat=True)) == {"senior_approver", "containment_owner"}

    [event] = events_since(start)
    assert event.action == "user.roles_changed"
    assert data_of(event) == {"user": "alice", "added": ["containment_owner", "senior_approver"],
                              "removed": ["approver"]}
    assert chain_verifies()


def test_saving_a_user_without_privilege_changes_writes_no_privilege_event(client, admin_user, approver):
    client.force_login(admin_user)
    start = head_seq()
    change_user(client, approver, first_name="Alice")
    approver.refresh_from_db()
    assert approver.first_name == "Alice"
    assert events_since(start) == []


def test_a_non_superuser_administrator_cannot_grant_superuser_status(client, admin_user, approver):
    client.force_login(admin_user)
    page = client.get(reverse("admin:auth_user_change", args=[approver.pk])).content.decode()
    assert 'name="is_superuser"' in page and "disabled" in page.split('name="is_superuser"')[1].split(">")[0]

    before = database_state()
    for target in (approver, admin_user):
        response = change_user(client, target, is_superuser=True, is_staff=True, groups=role_ids(Role.AUDITOR))
        assert response.status_code == 200 and ONLY_SUPERUSERS in response.content.decode()
    assert database_state() == before, "the refused form changed something or wrote an event"
    assert not User.objects.filter(is_superuser=True).exists()


def test_a_superusers_account_is_read_only_to_a_non_superuser_administrator(client, admin_user, root):
    client.force_login(admin_user)
    page = client.get(reverse("admin:auth_user_change", args=[root.pk]))
    assert page.status_code == 200 and 'name="_save"' not in page.content.decode()
    before = database_state()
    change_url = reverse("admin:auth_user_change", args=[root.pk])
    assert client.post(change_url, user_form(root, is_active=False)).status_code == 403
    password_url = reverse("admin:auth_user_password_change", args=[root.pk])
    assert client.post(password_url, {"password1": "x-Very-long-1", "password2": "x-Very-long-1"}).status_code == 403
    assert database_state() == before


def test_nobody_removes_their_own_superuser_status_or_deactivates_themselves(client, root, admin_user):
    client.force_login(root)
    before = database_state()
    response = change_user(client, root, is_superuser=False)
    assert "You cannot remove your own superuser status." in response.content.decode()
    response = change_user(client, root, is_active=False)
    assert "You cannot deactivate yourself." in response.content.decode()
    assert database_state() == before

    client.force_login(admin_user)
    response = change_user(client, admin_user, is_active=False)
    assert "You cannot deactivate yourself." in response.content.decode()
    assert database_state() == before


def test_global_permissions_are_read_only_and_users_are_not_deleted(client, admin_user, approver):
    client.force_login(admin_user)
    page = client.get(reverse("admin:auth_user_change", args=[approver.pk])).content.decode()
    assert 'name="user_permissions"' not in page and 'name="groups"' in page
    before = database_state()
    some = Group.objects.get(name=Role.APPROVER).pk  # any id: the field is not in the form
    change_user(client, approver, user_permissions=[some])
    assert database_state() == before
    assert client.post(reverse("admin:auth_user_delete", args=[approver.pk]), {"post": "yes"}).status_code == 403
    assert client.post(reverse("admin:auth_group_change", args=[some]), {"name": "x"}).status_code == 403
    assert database_state() == before


# --- workflow scope (guardian's object permission pages) -----------------------------------------

def test_object_permissions_edited_in_the_admin_are_granted_and_revoked_through_the_scope_services(
        client, admin_user, outsider, workflow):
    client.force_login(admin_user)
    url = reverse("admin:governance_workflow_permissions_manage_user", args=[workflow.pk, outsider.pk])
    start = head_seq()
    assert client.post(url, {"permissions": [VIEW, APPROVE]}).status_code == 302
    assert client.post(url, {"permissions": [VIEW, CONTAIN]}).status_code == 302

    granted, granted_again, revoked = events_since(start)
    assert (granted.action, granted.workflow_slug) == ("scope.granted", workflow.slug)
    assert data_of(granted) == {"user": "mallory", "permissions": [APPROVE, VIEW]}
    assert data_of(granted_again) == {"user": "mallory", "permissions": [CONTAIN]}
    assert (revoked.action, data_of(revoked)) == ("scope.revoked", {"user": "mallory", "permissions": [APPROVE]})
    fresh = User.objects.get(pk=outsider.pk)
    assert fresh.has_perm(perm(VIEW), workflow) and fresh.has_perm(perm(CONTAIN), workflow)
    assert not fresh.has_perm(perm(APPROVE), workflow)
    assert chain_verifies()


def test_the_scope_page_offers_only_the_scoped_permissions(client, admin_user, outsider, workflow):
    client.force_login(admin_user)
    url = reverse("admin:governance_workflow_permissions_manage_user", args=[workflow.pk, outsider.pk])
    before = database_state()
    response = client.post(url, {"permissions": ["delete_workflow"]})
    assert response.status_code == 200 and "delete_workflow is not one of the available choices" in (
        response.content.decode())
    assert database_state() == before


def test_group_object_permissions_are_read_only(client, admin_user, workflow):
    client.force_login(admin_user)
    group = Group.objects.get(name=Role.APPROVER)
    url = reverse("admin:governance_workflow_permissions_manage_group", args=[workflow.pk, group.pk])
    page = client.get(url)
    assert page.status_code == 200 and "Manage user" in page.content.decode()
    before = database_state()
    response = client.post(url, {"permissions": [VIEW, APPROVE]}, follow=True)
    assert "Role groups are given no workflow scope here" in response.content.decode()
    assert database_state() == before


# --- service accounts and tokens ----------------------------------------------------------------

def account_form(account: ServiceAccount, **changes) -> dict:
    fields = {"description": account.description, "owner": account.owner_id, "active": account.active,
              "workflows": list(account.workflows.values_list("pk", flat=True))}
    fields.update(changes)
    return {name: ("on" if value is True else value) for name, value in fields.items() if value is not False}


def test_service_account_owner_workflows_and_active_change_through_the_service(
        client, admin_user, account, workflow, other_workflow, senior_approver):
    client.force_login(admin_user)
    url = reverse("admin:governance_serviceaccount_change", args=[account.pk])
    start = head_seq()
    response = client.post(url, account_form(account, owner=senior_approver.pk, workflows=[other_workflow.pk]))
    assert response.status_code == 302
    response = client.post(url, account_form(ServiceAccount.objects.get(pk=account.pk), active=False))
    assert response.status_code == 302

    account.refresh_from_db()
    assert (account.owner, list(account.workflows.all()), account.active) == (senior_approver, [other_workflow], False)
    scoped, disabled = events_since(start)
    assert (scoped.action, scoped.subject_id) == ("service_account.updated", str(account.pk))
    assert data_of(scoped) == {"name": "refund-bot", "changes": {
        "owner": {"from": "alice", "to": "sam"},
        "workflows": {"from": [workflow.slug], "to": [other_workflow.slug]}}}
    assert data_of(disabled) == {"name": "refund-bot", "changes": {"active": {"from": True, "to": False}}}
    assert chain_verifies()


def test_a_service_account_created_in_the_admin_is_audited(client, admin_user, approver, workflow):
    client.force_login(admin_user)
    start = head_seq()
    response = client.post(reverse("admin:governance_serviceaccount_add"),
                           {"name": "ci-bot", "description": "CI", "owner": approver.pk, "workflows": [workflow.pk]})
    assert response.status_code == 302
    [event] = events_since(start)
    assert event.action == "service_account.created"
    assert data_of(event) == {"name": "ci-bot", "owner": "alice", "workflows": [workflow.slug]}


def test_a_service_accounts_name_is_fixed_and_accounts_are_not_deleted(client, admin_user, account):
    client.force_login(admin_user)
    before = database_state()
    url = reverse("admin:governance_serviceaccount_change", args=[account.pk])
    assert client.post(url, {**account_form(account), "name": "renamed"}).status_code == 302
    assert client.post(reverse("admin:governance_serviceaccount_delete", args=[account.pk]),
                       {"post": "yes"}).status_code == 403
    assert database_state() == before


def test_an_inactive_owner_is_refused_and_nothing_changes(client, admin_user, account):
    gone = factories.make_user("gone", is_active=False)
    client.force_login(admin_user)
    before = database_state()
    response = client.post(reverse("admin:governance_serviceaccount_change", args=[account.pk]),
                           account_form(account, owner=gone.pk, active=False), follow=True)
    assert "gone is not an active user." in response.content.decode().lower()
    assert database_state() == before


def test_a_token_revoked_in_the_admin_is_audited(client, admin_user, account):
    issued = services.issue_token(account.pk, actor=admin_user, label="ci")
    client.force_login(admin_user)
    start = head_seq()
    response = client.post(reverse("admin:governance_apitoken_changelist"),
                           {"action": "revoke", "_selected_action": [issued.token.pk]})
    assert response.status_code == 302
    assert ApiToken.objects.get(pk=issued.token.pk).revoked_at is not None
    [event] = events_since(start)
    assert (event.action, event.actor_label) == ("token.revoked", "ada")
    assert data_of(event) == {"service_account": "refund-bot", "prefix": issued.token.prefix}
    page = client.get(reverse("admin:governance_apitoken_change", args=[issued.token.pk])).content.decode()
    assert 'name="_save"' not in page
    assert chain_verifies()


# --- governed actions and containment duties ----------------------------------------------------

def workflow_form(workflow, actions: list[GovernedAction], new: dict | None = None) -> dict:
    form = {"name": workflow.name, "description": workflow.description, "environment": workflow.environment,
            "owning_team": workflow.owning_team, "autonomy_tier": workflow.autonomy_tier,
            "off_hours_tier": workflow.off_hours_tier or "", "timezone": workflow.timezone,
            "business_days": ["0", "1", "2", "3", "4"], "business_start": "09:00", "business_end": "17:00",
            "actions-TOTAL_FORMS": len(actions) + (1 if new else 0), "actions-INITIAL_FORMS": len(actions),
            "actions-MIN_NUM_FORMS": 0, "actions-MAX_NUM_FORMS": 1000}
    for i, action in enumerate(actions):
        form.update({f"actions-{i}-id": action.pk, f"actions-{i}-workflow": workflow.pk,
                     f"actions-{i}-name": action.name, f"actions-{i}-risk": action.risk,
                     f"actions-{i}-quorum": action.quorum, f"actions-{i}-description": action.description})
    if new:
        i = len(actions)
        form.update({f"actions-{i}-workflow": workflow.pk, **{f"actions-{i}-{k}": v for k, v in new.items()}})
    return form


def test_governed_actions_are_defined_through_the_service_from_the_workflow_page(client, admin_user, workflow):
    client.force_login(admin_user)
    url = reverse("admin:governance_workflow_change", args=[workflow.pk])
    start = head_seq()
    response = client.post(url, workflow_form(workflow, [], {"name": "refund_customer", "risk": "high",
                                                             "quorum": 1, "description": ""}))
    assert response.status_code == 302, response.content.decode()[:3000]
    action = GovernedAction.objects.get(workflow=workflow, name="refund_customer")
    action.quorum = 2
    assert client.post(url, workflow_form(workflow, [action])).status_code == 302
    assert GovernedAction.objects.get(pk=action.pk).quorum == 2

    events = events_since(start)
    assert [e.action for e in events] == ["workflow.action_defined"] * 2
    assert data_of(events[-1]) == {"name": "refund_customer", "risk": "high", "quorum": 2}
    assert chain_verifies()


def test_containment_duties_are_assigned_and_removed_through_the_services(client, admin_user, approver, workflow):
    client.force_login(admin_user)
    start = head_seq()
    response = client.post(reverse("admin:governance_containmentassignment_add"),
                           {"workflow": workflow.pk, "user": approver.pk, "duty": "pause", "position": "primary"})
    assert response.status_code == 302
    assignment = ContainmentAssignment.objects.get(workflow=workflow, user=approver)
    response = client.post(reverse("admin:governance_containmentassignment_delete", args=[assignment.pk]),
                           {"post": "yes"})
    assert response.status_code == 302
    assert [e.action for e in events_since(start)] == ["containment.assigned", "containment.removed"]
    assert chain_verifies()


# --- the services themselves --------------------------------------------------------------------

def test_the_user_services_refuse_without_changing_anything(admin_user, approver, root):
    with refused("forbidden"):
        services.set_user_flags(approver.pk, actor=admin_user, is_superuser=True)
    with refused("forbidden"):
        services.set_user_flags(root.pk, actor=admin_user, is_active=False)
    with refused("forbidden"):
        services.set_user_flags(admin_user.pk, actor=approver, is_staff=True)
    with refused("forbidden"):
        services.set_user_flags(root.pk, actor=root, is_superuser=False)
    with refused("not_found"):
        services.set_user_flags(999_999, actor=admin_user, is_staff=True)
    with refused("forbidden"):
        services.set_user_groups(approver.pk, actor=approver, groups=[Role.ADMINISTRATOR])
    with refused("invalid"):
        services.set_user_groups(approver.pk, actor=admin_user, groups=["superuser"])


def test_the_service_account_service_refuses_without_changing_anything(admin_user, approver, account, workflow):
    with refused("forbidden"):
        services.update_service_account(account.pk, actor=approver, active=False)
    with refused("not_found"):
        services.update_service_account(999_999, actor=admin_user, active=False)
    with refused("invalid"):
        services.update_service_account(account.pk, actor=admin_user, description="x" * 301)


def test_unchanged_values_write_no_event(admin_user, approver, account, workflow):
    start = head_seq()
    services.set_user_flags(approver.pk, actor=admin_user, is_active=True, is_staff=False, is_superuser=False)
    services.set_user_groups(approver.pk, actor=admin_user, groups=[Role.APPROVER])
    services.update_service_account(account.pk, actor=admin_user, owner=approver, workflows=[workflow], active=True,
                                    description=account.description)
    assert events_since(start) == []
