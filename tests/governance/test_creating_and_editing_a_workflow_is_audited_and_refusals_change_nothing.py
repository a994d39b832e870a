"""create_workflow / update_workflow: the allowed change with its audit event; every refusal leaves
the database exactly as it was, with no audit event."""

from __future__ import annotations

from datetime import time

import pytest

from audit import log as audit
from governance import services
from governance.models import Workflow
from governance.permissions import MANAGE_ROLLOUTS, VIEW, Role, perm
from tests import factories
from tests.governance.support import events_since, head_seq, refused


@pytest.mark.django_db
def test_an_administrator_creates_a_workflow_and_the_event_records_its_settings(admin_user):
    start = head_seq()
    workflow = services.create_workflow(actor=admin_user, slug="refund-agent", name="Refund agent", autonomy_tier=2,
                                        off_hours_tier=3, timezone="Europe/London",
                                        business_start=time(8, 30), business_end=time(18))
    [event] = events_since(start)
    assert (event.action, event.actor_label, event.subject_id, event.workflow_slug) == (
        "workflow.created", "ada", str(workflow.pk), "refund-agent")
    data = audit.event_payload(event)["data"]
    assert data["autonomy_tier"] == 2 and data["off_hours_tier"] == 3
    assert (data["business_start"], data["business_end"]) == ("08:30:00", "18:00:00")
    assert Workflow.objects.get(slug="refund-agent").timezone == "Europe/London"


@pytest.mark.django_db
def test_a_release_manager_who_creates_a_workflow_gets_it_in_scope(db):
    rhea = factories.make_user("rhea", role=Role.RELEASE_MANAGER)
    workflow = services.create_workflow(actor=rhea, slug="support-reply", name="Support reply")
    assert rhea.has_perm(perm(VIEW), workflow) and rhea.has_perm(perm(MANAGE_ROLLOUTS), workflow)


@pytest.mark.django_db
def test_people_without_the_role_cannot_create_workflows(approver, auditor):
    for person in (approver, auditor):
        with refused("forbidden"):
            services.create_workflow(actor=person, slug="sneaky", name="Sneaky")


@pytest.mark.django_db
@pytest.mark.parametrize("fields, field", [
    ({"slug": "Refund Agent"}, "slug"),
    ({"timezone": "Mars/Olympus_Mons"}, "timezone"),
    ({"business_start": time(18), "business_end": time(9)}, "business_end"),
    ({"autonomy_tier": 7}, "autonomy_tier"),
    ({"business_days": [0, 0, 1]}, "business_days"),
    ({"environment": "moon"}, "environment"),
])
def test_invalid_settings_are_refused_naming_the_field(admin_user, fields, field):
    values = {"slug": "refund-agent", "name": "Refund agent", **fields}
    with refused("invalid") as info:
        services.create_workflow(actor=admin_user, **values)
    assert info.value.field == field


@pytest.mark.django_db
def test_a_taken_slug_and_unknown_fields_are_refused(admin_user, workflow):
    with refused("invalid") as info:
        services.create_workflow(actor=admin_user, slug=workflow.slug, name="Again")
    assert info.value.field == "slug"
    with refused("invalid"):
        services.create_workflow(actor=admin_user, slug="new-one", name="New", paused=True)


@pytest.mark.django_db
def test_an_edit_records_old_and_new_values(admin_user, workflow):
    start = head_seq()
    services.update_workflow(workflow.pk, actor=admin_user, autonomy_tier=3, owning_team="Payments")
    [event] = events_since(start)
    assert event.action == "workflow.updated"
    assert audit.event_payload(event)["data"]["changes"] == {
        "autonomy_tier": {"from": 2, "to": 3}, "owning_team": {"from": "", "to": "Payments"}}
    workflow.refresh_from_db()
    assert (workflow.autonomy_tier, workflow.owning_team) == (3, "Payments")


@pytest.mark.django_db
def test_an_edit_that_changes_nothing_writes_no_event(admin_user, workflow):
    start = head_seq()
    # The same values, also when given in another form (a string for a time field).
    services.update_workflow(workflow.pk, actor=admin_user, autonomy_tier=workflow.autonomy_tier,
                             business_start="09:00")
    assert events_since(start) == []


@pytest.mark.django_db
def test_a_release_manager_edits_only_workflows_in_their_scope(workflow, other_workflow):
    rhea = factories.make_user("rhea", role=Role.RELEASE_MANAGER)
    factories.scope(rhea, workflow)
    services.update_workflow(workflow.pk, actor=rhea, description="Refunds failed orders.")
    with refused("forbidden"):
        services.update_workflow(other_workflow.pk, actor=rhea, description="Not mine.")


@pytest.mark.django_db
def test_edits_refused_for_approvers_bad_values_and_unknown_workflows(admin_user, approver, workflow):
    with refused("forbidden"):
        services.update_workflow(workflow.pk, actor=approver, autonomy_tier=1)
    with refused("invalid"):
        services.update_workflow(workflow.pk, actor=admin_user, timezone="Nowhere/Land")
    with refused("invalid"):
        services.update_workflow(workflow.pk, actor=admin_user, slug="renamed")
    with refused("not_found"):
        services.update_workflow(999_999, actor=admin_user, autonomy_tier=1)
