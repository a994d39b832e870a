from __future__ import annotations

from django.urls import reverse

from approvals import services
from approvals.models import ApprovalRequest, Decision
from tests import factories

CHANGELIST = reverse("admin:approvals_approvalrequest_changelist")


def test_admin_approve_action_still_enforces_four_eyes(client, workflow, make_request):
    """ACL-02 through the admin: the superuser who asked cannot approve it from the changelist."""
    root = factories.make_user("root", is_superuser=True, is_staff=True)
    own = services.create_request(workflow=workflow, kind="policy_change", action="raise_limit", requester=root)
    other = make_request()
    client.force_login(root)
    response = client.post(CHANGELIST, {"action": "approve_selected", "_selected_action": [own.pk, other.pk]},
                           follow=True)
    page = response.content.decode()
    assert f"#{own.pk}: You asked for this" in page and "1 request(s) approved." in page
    assert not Decision.objects.filter(request=own).exists()
    assert ApprovalRequest.objects.get(pk=other.pk).state == ApprovalRequest.State.APPROVED


def test_admin_shows_requests_read_only(client, make_request):
    root = factories.make_user("root", is_superuser=True, is_staff=True)
    req = make_request()
    client.force_login(root)
    assert client.get(CHANGELIST).status_code == 200
    page = client.get(reverse("admin:approvals_approvalrequest_change", args=[req.pk]))
    assert page.status_code == 200 and 'name="_save"' not in page.content.decode()
