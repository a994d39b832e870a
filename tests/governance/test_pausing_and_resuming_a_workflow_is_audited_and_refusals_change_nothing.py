"""pause_workflow / resume_workflow (the kill switch): who may, what is recorded, and refusals that
change nothing."""

from __future__ import annotations

import pytest

from audit import log as audit
from governance import services
from governance.models import Workflow
from governance.permissions import Role
from tests import factories
from tests.governance.support import events_since, head_seq, refused


@pytest.mark.django_db
def test_a_containment_owner_pauses_with_a_reason_and_resumes(containment_owner, workflow):
    start = head_seq()
    services.pause_workflow(workflow.pk, actor=containment_owner, reason="  refunds look wrong  ")
    paused = Workflow.objects.get(pk=workflow.pk)
    assert paused.paused and paused.paused_reason == "refunds look wrong" and paused.paused_by == containment_owner
    assert paused.paused_at is not None

    services.resume_workflow(workflow.pk, actor=containment_owner, reason="fixed in 1.4.2")
    resumed = Workflow.objects.get(pk=workflow.pk)
    assert not resumed.paused and resumed.paused_reason == "" and resumed.paused_by is None

    pause_event, resume_event = events_since(start)
    assert (pause_event.action, pause_event.reason, pause_event.actor_label) == (
        "workflow.paused", "refunds look wrong", "olivia")
    assert (resume_event.action, resume_event.reason) == ("workflow.resumed", "fixed in 1.4.2")
    assert pause_event.workflow_slug == resume_event.workflow_slug == workflow.slug


@pytest.mark.django_db
def test_an_agent_in_scope_may_pull_its_own_kill_switch_but_not_release_it(admin_user, workflow):
    account = factories.make_service_account("refund-bot", owner=admin_user, workflows=[workflow])
    start = head_seq()
    services.pause_workflow(workflow.pk, actor=account, reason="anomaly detector fired")
    [event] = events_since(start)
    assert audit.event_payload(event)["actor"] == {"kind": "service", "id": str(account.pk), "label": "refund-bot"}
    assert Workflow.objects.get(pk=workflow.pk).paused_by is None
    with refused("forbidden"):
        services.resume_workflow(workflow.pk, actor=account)


@pytest.mark.django_db
def test_the_primary_pause_owner_may_pause_through_the_duty_alone(admin_user, workflow):
    """Owning the pause duty is enough, even where the object permission was taken away later."""
    oscar = factories.make_user("oscar", role=Role.CONTAINMENT_OWNER)
    services.assign_containment(workflow.pk, actor=admin_user, user=oscar, duty="pause")
    services.revoke_scope(workflow.pk, actor=admin_user, user=oscar)
    services.pause_workflow(workflow.pk, actor=oscar, reason="duty owner")
    assert Workflow.objects.get(pk=workflow.pk).paused


@pytest.mark.django_db
def test_pause_refusals_change_nothing(admin_user, approver, auditor, containment_owner, workflow, other_workflow):
    other_bot = factories.make_service_account("other-bot", owner=admin_user, workflows=[other_workflow])
    for person in (approver, auditor, other_bot):
        with refused("forbidden"):
            services.pause_workflow(workflow.pk, actor=person, reason="not my switch")
    with refused("forbidden"):  # in scope of one workflow only
        services.pause_workflow(other_workflow.pk, actor=containment_owner, reason="not mine")
    for reason in ("", "   ", "x" * 2001):
        with refused("invalid") as info:
            services.pause_workflow(workflow.pk, actor=containment_owner, reason=reason)
        assert info.value.field == "reason"
    with refused("not_found"):
        services.pause_workflow(999_999, actor=containment_owner, reason="gone")


@pytest.mark.django_db
def test_an_inactive_person_cannot_pause(containment_owner, workflow):
    containment_owner.is_active = False
    containment_owner.save(update_fields=["is_active"])
    with refused("forbidden"):
        services.pause_workflow(workflow.pk, actor=containment_owner, reason="left the company")


@pytest.mark.django_db
def test_pausing_twice_or_resuming_a_running_workflow_is_refused(containment_owner, workflow):
    with refused("not_paused"):
        services.resume_workflow(workflow.pk, actor=containment_owner)
    services.pause_workflow(workflow.pk, actor=containment_owner, reason="first")
    with refused("already_paused") as info:
        services.pause_workflow(workflow.pk, actor=containment_owner, reason="second")
    assert "first" in info.value.message


@pytest.mark.django_db
def test_resume_refused_for_people_without_the_containment_permission(approver, containment_owner, workflow):
    services.pause_workflow(workflow.pk, actor=containment_owner, reason="incident")
    with refused("forbidden"):
        services.resume_workflow(workflow.pk, actor=approver)
