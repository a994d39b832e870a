"""Signing in through the identity provider (services.sign_in_with_identity, as the OIDC callback calls it with the
verified claims): who is created or linked, and how roles and workflow scope follow the groups through the group
mappings, audited as any role or scope change, taking away only what a mapping gave."""

from __future__ import annotations

import pytest
from django.contrib.auth.models import User

from audit.models import AuditEvent
from governance import identity, services
from governance.models import GroupMapping, IdentityGrant, IdentityLink
from governance.permissions import APPROVE, CONTAIN, MANAGE_ROLLOUTS, VIEW, Role, perm
from tests import factories
from tests.governance.support import head_seq, refused

pytestmark = pytest.mark.django_db

ISSUER = "https://login.example.com"


def claims(sub: str = "00u-alice", groups: list[str] | None = None, **more) -> dict:
    base = {"sub": sub, "preferred_username": "alice", "email": "alice@example.com", "email_verified": True,
            "given_name": "Alice", "family_name": "Approver", "groups": groups if groups is not None else []}
    return {**base, **more}


def sign_in(**kwargs) -> User:
    return services.sign_in_with_identity(issuer=ISSUER, claims=claims(**kwargs), groups_claim="groups")


def roles_of(user: User) -> set[str]:
    return set(User.objects.get(pk=user.pk).groups.values_list("name", flat=True))


def fresh(user: User) -> User:
    return User.objects.get(pk=user.pk)  # permission caches start empty


@pytest.fixture
def mappings(admin_user, workflow, other_workflow):
    services.define_group_mapping(actor=admin_user, group="payments-approvers", roles=[Role.APPROVER],
                                  scope={workflow.slug: [VIEW, APPROVE]})
    services.define_group_mapping(actor=admin_user, group="sre", roles=[Role.CONTAINMENT_OWNER],
                                  scope={workflow.slug: [VIEW, CONTAIN], other_workflow.slug: [VIEW, CONTAIN]})


def test_the_first_sign_in_creates_the_person_with_the_roles_and_scope_their_groups_map_to(mappings, workflow,
                                                                                             other_workflow):
    mark = head_seq()
    user = sign_in(groups=["payments-approvers", "unmapped-group"])

    assert (user.username, user.email, user.first_name, user.last_name) == (
        "alice", "alice@example.com", "Alice", "Approver")
    assert not user.has_usable_password()
    link = IdentityLink.objects.get(user=user)
    assert (link.issuer, link.subject, link.email_verified) == (ISSUER, "00u-alice", True)
    assert link.groups == ["payments-approvers", "unmapped-group"]
    assert roles_of(user) == {Role.APPROVER}
    assert fresh(user).has_perm(perm(APPROVE), workflow)
    assert not fresh(user).has_perm(perm(VIEW), other_workflow)
    events = AuditEvent.objects.filter(seq__gt=mark).order_by("seq")
    assert [(e.action, e.actor_label) for e in events] == [
        ("user.created", identity.IDENTITY_ACTOR), ("role.granted", identity.IDENTITY_ACTOR),
        ("scope.granted", identity.IDENTITY_ACTOR)]
    granted = events.get(action="scope.granted")
    assert granted.data == {"user": "alice", "permissions": [APPROVE, VIEW], "groups": ["payments-approvers"]}
    assert events.get(action="role.granted").data["groups"] == ["payments-approvers"]


def test_an_email_the_provider_did_not_verify_is_kept_but_not_marked_verified(mappings):
    user = sign_in(email_verified=False)
    assert user.email == "alice@example.com"
    assert IdentityLink.objects.get(user=user).email_verified is False
    user = sign_in(email_verified="true")  # some providers send the string
    assert IdentityLink.objects.get(user=user).email_verified is True


def test_the_username_falls_back_to_the_email_and_the_subject_finds_the_person_again(mappings):
    user = sign_in(sub="00u-bo", preferred_username="bo with spaces", email="bo@example.com")
    assert user.username == "bo@example.com"
    again = sign_in(sub="00u-bo", preferred_username="renamed", email="bo.new@example.com")
    assert again.pk == user.pk and again.username == "bo@example.com" and again.email == "bo.new@example.com"
    assert User.objects.filter(identity__isnull=False).count() == 1


def test_a_removed_group_takes_away_only_what_its_mapping_gave(admin_user, mappings, workflow, other_workflow):
    user = sign_in(groups=["payments-approvers", "sre"])
    assert roles_of(user) == {Role.APPROVER, Role.CONTAINMENT_OWNER}
    # Given by hand meanwhile: another role, and a permission the sre mapping also gives.
    services.set_role(actor=admin_user, user=user, role=Role.MANAGER)
    services.grant_scope(workflow.pk, actor=admin_user, user=user, permissions=[MANAGE_ROLLOUTS])

    mark = head_seq()
    user = sign_in(groups=["payments-approvers"])  # left the sre group

    assert roles_of(user) == {Role.APPROVER, Role.MANAGER}
    user = fresh(user)
    assert user.has_perm(perm(APPROVE), workflow) and user.has_perm(perm(MANAGE_ROLLOUTS), workflow)
    assert not user.has_perm(perm(CONTAIN), workflow)
    assert not user.has_perm(perm(VIEW), other_workflow)
    assert user.has_perm(perm(VIEW), workflow)  # payments-approvers still gives it
    events = list(AuditEvent.objects.filter(seq__gt=mark).order_by("seq"))
    assert [(e.action, e.subject_id) for e in events] == [
        ("role.revoked", str(user.pk)), ("scope.revoked", str(other_workflow.pk)), ("scope.revoked", str(workflow.pk))]
    assert events[0].data == {"role": Role.CONTAINMENT_OWNER, "user": "alice", "groups": ["sre"]}
    assert events[2].data["permissions"] == [CONTAIN]

    mark = head_seq()
    user = sign_in(groups=[])
    assert roles_of(user) == {Role.MANAGER}
    assert fresh(user).has_perm(perm(MANAGE_ROLLOUTS), workflow)
    assert not fresh(user).has_perm(perm(VIEW), workflow)
    assert not IdentityGrant.objects.filter(user=user).exists()
    assert {e.action for e in AuditEvent.objects.filter(seq__gt=mark)} == {"role.revoked", "scope.revoked"}


def test_a_role_held_by_hand_before_the_first_sign_in_stays_when_the_group_goes(admin_user, mappings, workflow):
    alice = factories.make_user("alice", role=Role.APPROVER)  # made by an administrator, with the same email
    factories.scope(alice, workflow)
    user = sign_in(groups=["payments-approvers"])
    assert user.pk == alice.pk
    assert not IdentityGrant.objects.filter(user=user).exists()  # nothing was given by the mapping
    sign_in(groups=[])
    assert roles_of(user) == {Role.APPROVER}
    assert fresh(user).has_perm(perm(APPROVE), workflow)


def test_signing_in_again_with_the_same_groups_changes_and_audits_nothing(mappings):
    sign_in(groups=["payments-approvers"])
    mark = head_seq()
    sign_in(groups=["payments-approvers"])
    assert not AuditEvent.objects.filter(seq__gt=mark).exists()


def test_a_mapping_changed_in_the_file_applies_at_the_next_sign_in(admin_user, mappings, workflow):
    user = sign_in(groups=["payments-approvers"])
    services.define_group_mapping(actor=admin_user, group="payments-approvers", roles=[Role.SENIOR_APPROVER],
                                  scope={workflow.slug: [VIEW]})
    assert roles_of(user) == {Role.APPROVER}  # nothing changes until the person signs in
    user = sign_in(groups=["payments-approvers"])
    assert roles_of(user) == {Role.SENIOR_APPROVER}
    assert fresh(user).has_perm(perm(VIEW), workflow) and not fresh(user).has_perm(perm(APPROVE), workflow)
    services.remove_group_mapping(actor=admin_user, group="payments-approvers")
    user = sign_in(groups=["payments-approvers"])
    assert roles_of(user) == set() and not fresh(user).has_perm(perm(VIEW), workflow)


def test_an_administrator_mapping_brings_the_staff_flag_and_takes_it_back(admin_user):
    services.define_group_mapping(actor=admin_user, group="ringfence-admins", roles=[Role.ADMINISTRATOR], scope={})
    user = sign_in(groups=["ringfence-admins"])
    assert user.is_staff and not user.is_superuser
    mark = head_seq()
    user = sign_in(groups=[])
    assert not fresh(user).is_staff
    assert [e.action for e in AuditEvent.objects.filter(seq__gt=mark).order_by("seq")] == [
        "role.revoked", "user.flags_changed"]


def test_an_existing_account_is_linked_only_when_the_provider_verified_its_email(admin_user, mappings):
    factories.make_user("alice")  # alice@example.com
    with refused("forbidden"):
        sign_in(email_verified=False)
    with refused("forbidden"):
        sign_in(email="someone-else@example.com")
    assert not IdentityLink.objects.exists()
    mark = head_seq()
    user = sign_in()
    assert IdentityLink.objects.get(user=user).subject == "00u-alice"
    assert AuditEvent.objects.get(seq__gt=mark, action="user.identity_linked").data["subject"] == "00u-alice"
    with refused("forbidden"):  # a second identity may not take the linked account over
        sign_in(sub="00u-impostor")


def test_a_deactivated_account_is_refused_and_keeps_its_grants(admin_user, mappings):
    user = sign_in(groups=["payments-approvers"])
    services.set_user_flags(user.pk, actor=admin_user, is_active=False)
    with refused("forbidden"):
        sign_in(groups=[])
    assert IdentityGrant.objects.filter(user=user).exists()


def test_an_answer_without_a_subject_or_a_usable_name_signs_nobody_in(mappings):
    with refused("invalid"):
        services.sign_in_with_identity(issuer=ISSUER, claims={"email": "x@example.com"}, groups_claim="groups")
    with refused("invalid"):
        sign_in(preferred_username=None, email="not an email")
    assert not User.objects.filter(identity__isnull=False).exists()


def test_the_groups_claim_is_read_by_its_configured_name_and_a_single_string_counts(mappings):
    user = services.sign_in_with_identity(issuer=ISSUER, claims=claims(roles_claim="payments-approvers"),
                                          groups_claim="roles_claim")
    assert roles_of(user) == {Role.APPROVER}


def test_mappings_are_defined_by_administrators_audited_and_checked(admin_user, approver, workflow):
    mark = head_seq()
    mapping = services.define_group_mapping(actor=admin_user, group="auditors", roles=[Role.AUDITOR], scope={})
    assert AuditEvent.objects.get(seq__gt=mark).action == "identity.mapping_defined"
    with refused("forbidden"):
        services.define_group_mapping(actor=approver, group="x", roles=[Role.ADMINISTRATOR], scope={})
    with refused("invalid"):
        services.define_group_mapping(actor=admin_user, group="x", roles=["wizard"], scope={})
    with refused("invalid"):
        services.define_group_mapping(actor=admin_user, group="x", roles=[], scope={"no-such-workflow": [VIEW]})
    with refused("invalid"):
        services.define_group_mapping(actor=admin_user, group="x", roles=[], scope={workflow.slug: ["delete_all"]})
    mark = head_seq()
    services.define_group_mapping(actor=admin_user, group="auditors", roles=[Role.AUDITOR], scope={})
    assert not AuditEvent.objects.filter(seq__gt=mark).exists()  # unchanged: nothing written
    services.remove_group_mapping(actor=admin_user, group="auditors")
    event = AuditEvent.objects.get(seq__gt=mark)
    assert (event.action, event.subject_id, event.data["roles"]) == (
        "identity.mapping_removed", str(mapping.pk), [Role.AUDITOR])
    assert not GroupMapping.objects.exists()
