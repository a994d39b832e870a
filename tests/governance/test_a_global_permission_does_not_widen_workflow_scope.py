"""ACL-03: a model-level permission wrongly given to a role group (or a person) never widens scope:
the workflow list stays empty, the detail page is 404 and the services still refuse. guardian's
get_objects_for_user would otherwise return every workflow (accept_global_perms=True)."""

from __future__ import annotations

import pytest
from django.contrib.auth.models import Group, Permission
from django.urls import reverse

from governance import selectors, services
from governance.permissions import APPROVE, CONTAIN, MANAGE_ROLLOUTS, SCOPED_PERMISSIONS, VIEW, Role
from tests.governance.support import refused

WRONG = [VIEW, APPROVE, CONTAIN, MANAGE_ROLLOUTS]


def _model_level(*codenames: str) -> list[Permission]:
    return list(Permission.objects.filter(content_type__app_label="governance", codename__in=codenames))


@pytest.fixture
def misconfigured_approver_group():
    group = Group.objects.get(name=Role.APPROVER)
    group.permissions.add(*_model_level(*WRONG))
    return group


@pytest.mark.django_db
def test_role_group_with_model_level_permissions_sees_no_workflow(
        client, misconfigured_approver_group, outsider, workflow, other_workflow, figures):
    visible = {codename: selectors.workflows_with_perm(outsider, codename).count() for codename in SCOPED_PERMISSIONS}
    client.force_login(outsider)
    listing = client.get(reverse("governance:workflow_list"))
    details = [client.get(w.get_absolute_url()).status_code for w in (workflow, other_workflow)]
    figures(f"ACL-03 objects visible through a wrongly global permission: {sum(visible.values())} "
            f"(per permission {visible}); detail pages {details}")

    assert outsider.has_perm(f"governance.{APPROVE}")  # the misconfiguration is real
    assert visible == {codename: 0 for codename in SCOPED_PERMISSIONS}
    assert selectors.workflows_visible_to(outsider).count() == 0
    assert workflow.slug not in listing.content.decode() and other_workflow.slug not in listing.content.decode()
    assert details == [404, 404]


@pytest.mark.django_db
def test_services_ignore_model_level_permissions(misconfigured_approver_group, outsider, workflow):
    with refused("forbidden"):
        services.pause_workflow(workflow.pk, actor=outsider, reason="not mine")
    with refused("forbidden"):
        services.update_workflow(workflow.pk, actor=outsider, autonomy_tier=1)
    with refused("forbidden"):
        services.define_action(workflow.pk, actor=outsider, name="refund_customer", risk="low")


@pytest.mark.django_db
def test_a_personal_model_level_permission_does_not_widen_scope_either(client, outsider, workflow):
    outsider.user_permissions.add(*_model_level(*WRONG))
    client.force_login(outsider)
    assert selectors.workflows_visible_to(outsider).count() == 0
    assert client.get(workflow.get_absolute_url()).status_code == 404


@pytest.mark.django_db
def test_administrators_see_every_workflow_by_their_role_not_by_the_admin_sites_model_permissions(
        client, admin_user, workflow, outsider):
    """Administrators hold model-level view permissions for the Django admin; those alone widen
    nothing (a person given the same permissions sees no workflow). Administrators see every
    workflow because they administer them all, the ones they created included."""
    assert admin_user.has_perm(f"governance.{VIEW}")
    outsider.user_permissions.add(*admin_user.groups.get(name=Role.ADMINISTRATOR).permissions.all())
    assert selectors.workflows_visible_to(outsider).count() == 0
    assert list(selectors.workflows_visible_to(admin_user)) == [workflow]
    client.force_login(admin_user)
    assert client.get(workflow.get_absolute_url()).status_code == 200
    admin_user.groups.clear()
    del admin_user._ringfence_roles
    assert selectors.workflows_visible_to(admin_user).count() == 0
