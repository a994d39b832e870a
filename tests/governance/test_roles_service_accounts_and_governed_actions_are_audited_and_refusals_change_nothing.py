"""set_role / create_service_account / define_action: the administrators' remaining services."""

from __future__ import annotations

import pytest

from audit import log as audit
from governance import services
from governance.models import GovernedAction, ServiceAccount
from governance.permissions import Role
from governance.selectors import has_role
from tests import factories
from tests.governance.support import events_since, head_seq, refused


@pytest.mark.django_db
def test_an_administrator_adds_and_removes_a_role(admin_user, outsider):
    start = head_seq()
    services.set_role(actor=admin_user, user=outsider, role=Role.SENIOR_APPROVER)
    assert outsider.groups.filter(name=Role.SENIOR_APPROVER).exists()
    services.set_role(actor=admin_user, user=outsider, role=Role.SENIOR_APPROVER, member=False)
    assert not outsider.groups.filter(name=Role.SENIOR_APPROVER).exists()
    granted, revoked = events_since(start)
    assert (granted.action, revoked.action) == ("role.granted", "role.revoked")
    assert audit.event_payload(granted)["data"] == {"role": "senior_approver"}
    assert granted.subject_id == str(outsider.pk)


@pytest.mark.django_db
def test_only_administrators_change_roles_and_only_to_known_roles(admin_user, approver):
    with refused("forbidden"):
        services.set_role(actor=approver, user=approver, role=Role.ADMINISTRATOR)
    assert not has_role(approver, Role.ADMINISTRATOR)
    with refused("invalid"):
        services.set_role(actor=admin_user, user=approver, role="superuser")


@pytest.mark.django_db
def test_a_service_account_is_created_scoped_to_its_workflows(admin_user, approver, workflow, other_workflow):
    start = head_seq()
    account = services.create_service_account(actor=admin_user, name="refund-bot", owner=approver,
                                              workflows=[workflow], description="Refund agent")
    assert list(ServiceAccount.objects.get(pk=account.pk).workflows.all()) == [workflow]
    [event] = events_since(start)
    assert event.action == "service_account.created"
    assert audit.event_payload(event)["data"] == {"name": "refund-bot", "owner": "alice", "workflows": [workflow.slug]}


@pytest.mark.django_db
def test_service_account_refusals_change_nothing(admin_user, approver, workflow):
    with refused("forbidden"):
        services.create_service_account(actor=approver, name="my-bot", owner=approver, workflows=[workflow])
    with refused("invalid") as info:
        services.create_service_account(actor=admin_user, name="Not A Slug", owner=approver, workflows=[workflow])
    assert info.value.field == "name"
    factories.make_service_account("refund-bot", owner=approver, workflows=[workflow])
    with refused("invalid"):
        services.create_service_account(actor=admin_user, name="refund-bot", owner=approver, workflows=[])


@pytest.mark.django_db
def test_a_governed_action_is_declared_and_changed_with_events(admin_user, workflow):
    start = head_seq()
    services.define_action(workflow.pk, actor=admin_user, name="refund_customer", risk="high", quorum=1)
    services.define_action(workflow.pk, actor=admin_user, name="refund_customer", risk="critical", quorum=2)
    action = GovernedAction.objects.get(workflow=workflow, name="refund_customer")
    assert (action.risk, action.quorum) == ("critical", 2)
    events = events_since(start)
    assert [e.action for e in events] == ["workflow.action_defined"] * 2
    assert audit.event_payload(events[-1])["data"] == {"name": "refund_customer", "risk": "critical", "quorum": 2}
    assert {e.workflow_slug for e in events} == {workflow.slug}


@pytest.mark.django_db
def test_governed_action_refusals_change_nothing(admin_user, approver, workflow):
    with refused("forbidden"):
        services.define_action(workflow.pk, actor=approver, name="refund_customer", risk="low")
    for bad in ({"risk": "apocalyptic"}, {"risk": "low", "quorum": 0}, {"risk": "low", "quorum": 10},
                {"risk": "low", "name": "Refund Customer"}):
        with refused("invalid"):
            services.define_action(workflow.pk, actor=admin_user, **{"name": "refund_customer", **bad})
