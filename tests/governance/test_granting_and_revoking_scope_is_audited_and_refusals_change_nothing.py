"""grant_scope / revoke_scope: administrators give and take object permissions per workflow."""

from __future__ import annotations

import pytest

from audit import log as audit
from governance import services
from governance.permissions import APPROVE, CONTAIN, SCOPED_PERMISSIONS, VIEW, perm
from tests.governance.support import events_since, head_seq, refused


@pytest.mark.django_db
def test_an_administrator_grants_scope_and_the_event_names_who_and_what(admin_user, outsider, workflow):
    start = head_seq()
    granted = services.grant_scope(workflow.pk, actor=admin_user, user=outsider, permissions=[APPROVE, VIEW, VIEW])
    assert granted == sorted([APPROVE, VIEW])
    assert outsider.has_perm(perm(VIEW), workflow) and outsider.has_perm(perm(APPROVE), workflow)
    [event] = events_since(start)
    assert (event.action, event.workflow_slug) == ("scope.granted", workflow.slug)
    assert audit.event_payload(event)["data"] == {"user": "mallory", "permissions": granted}


@pytest.mark.django_db
def test_revoking_some_or_all_permissions(admin_user, containment_owner, workflow):
    start = head_seq()
    assert services.revoke_scope(workflow.pk, actor=admin_user, user=containment_owner,
                                 permissions=[CONTAIN]) == [CONTAIN]
    assert containment_owner.has_perm(perm(VIEW), workflow)
    assert not containment_owner.has_perm(perm(CONTAIN), workflow)
    assert services.revoke_scope(workflow.pk, actor=admin_user, user=containment_owner) == sorted(SCOPED_PERMISSIONS)
    assert not containment_owner.has_perm(perm(VIEW), workflow)
    assert [e.action for e in events_since(start)] == ["scope.revoked", "scope.revoked"]


@pytest.mark.django_db
def test_scope_refusals_change_nothing(admin_user, approver, outsider, workflow):
    for person in (approver, outsider):  # only administrators
        with refused("forbidden"):
            services.grant_scope(workflow.pk, actor=person, user=person, permissions=[VIEW])
        with refused("forbidden"):
            services.revoke_scope(workflow.pk, actor=person, user=approver)
    for permissions in ([], ["delete_workflow"], "view_workflow"):
        with refused("invalid") as info:
            services.grant_scope(workflow.pk, actor=admin_user, user=outsider, permissions=permissions)
        assert info.value.field == "permissions"
    for permissions in ([], ["delete_workflow"]):  # an empty list is a mistake, not "everything"
        with refused("invalid"):
            services.revoke_scope(workflow.pk, actor=admin_user, user=approver, permissions=permissions)
    with refused("not_found"):
        services.grant_scope(999_999, actor=admin_user, user=outsider, permissions=[VIEW])
