"""assign_containment / remove_containment: one primary per duty, backups beside it, the owner gets
the workflow's contain scope; refusals change nothing."""

from __future__ import annotations

import pytest

from audit import log as audit
from governance import services
from governance.models import ContainmentAssignment
from governance.permissions import CONTAIN, VIEW, Role, perm
from tests import factories
from tests.governance.support import events_since, head_seq, refused


@pytest.fixture
def oscar(db):
    return factories.make_user("oscar", role=Role.CONTAINMENT_OWNER)


@pytest.mark.django_db
def test_an_administrator_names_a_primary_owner_who_gets_the_contain_scope(admin_user, workflow, oscar):
    start = head_seq()
    assignment = services.assign_containment(workflow.pk, actor=admin_user, user=oscar, duty="rollback")
    assert (assignment.duty, assignment.position, assignment.user) == ("rollback", "primary", oscar)
    assert oscar.has_perm(perm(VIEW), workflow) and oscar.has_perm(perm(CONTAIN), workflow)
    [event] = events_since(start)
    assert (event.action, event.subject_id, event.workflow_slug) == (
        "containment.assigned", str(assignment.pk), workflow.slug)
    assert audit.event_payload(event)["data"] == {"user": "oscar", "duty": "rollback", "position": "primary"}


@pytest.mark.django_db
def test_a_release_manager_in_scope_may_assign_a_backup_beside_the_primary(admin_user, workflow, oscar,
                                                                           containment_owner):
    rhea = factories.make_user("rhea", role=Role.RELEASE_MANAGER)
    factories.scope(rhea, workflow)
    services.assign_containment(workflow.pk, actor=rhea, user=containment_owner, duty="pause")
    services.assign_containment(workflow.pk, actor=rhea, user=oscar, duty="pause", position="backup")
    assert sorted(workflow.containment.filter(duty="pause").values_list("position", flat=True)) == ["backup", "primary"]


@pytest.mark.django_db
def test_assignment_refusals_change_nothing(admin_user, approver, workflow, oscar, containment_owner):
    services.assign_containment(workflow.pk, actor=admin_user, user=containment_owner, duty="pause")
    with refused("forbidden"):
        services.assign_containment(workflow.pk, actor=approver, user=oscar, duty="narrow")
    with refused("conflict") as info:  # a second primary
        services.assign_containment(workflow.pk, actor=admin_user, user=oscar, duty="pause")
    assert "olivia is already the primary" in info.value.message
    with refused("conflict"):  # the same person twice on one duty
        services.assign_containment(workflow.pk, actor=admin_user, user=containment_owner, duty="pause",
                                    position="backup")
    with refused("invalid") as info:
        services.assign_containment(workflow.pk, actor=admin_user, user=oscar, duty="self_destruct")
    assert info.value.field == "duty"
    with refused("invalid") as info:
        services.assign_containment(workflow.pk, actor=admin_user, user=oscar, duty="narrow", position="deputy")
    assert info.value.field == "position"
    oscar.is_active = False
    oscar.save(update_fields=["is_active"])
    with refused("invalid") as info:
        services.assign_containment(workflow.pk, actor=admin_user, user=oscar, duty="narrow")
    assert info.value.field == "user"
    with refused("not_found"):
        services.assign_containment(999_999, actor=admin_user, user=containment_owner, duty="narrow")


@pytest.mark.django_db
def test_removing_an_owner_is_audited_with_who_held_which_duty(admin_user, workflow, oscar):
    assignment = services.assign_containment(workflow.pk, actor=admin_user, user=oscar, duty="fallback")
    start = head_seq()
    services.remove_containment(assignment.pk, actor=admin_user)
    assert not ContainmentAssignment.objects.filter(pk=assignment.pk).exists()
    [event] = events_since(start)
    assert (event.action, event.subject_type, event.subject_id, event.workflow_slug) == (
        "containment.removed", "governance.containmentassignment", str(assignment.pk), workflow.slug)
    assert audit.event_payload(event)["data"] == {"user": "oscar", "duty": "fallback", "position": "primary"}


@pytest.mark.django_db
def test_removal_refusals_change_nothing(admin_user, approver, workflow, oscar):
    assignment = services.assign_containment(workflow.pk, actor=admin_user, user=oscar, duty="escalate")
    with refused("forbidden"):
        services.remove_containment(assignment.pk, actor=approver)
    services.remove_containment(assignment.pk, actor=admin_user)
    with refused("not_found"):  # removed already: no second event
        services.remove_containment(assignment.pk, actor=admin_user)
