"""Each queue item names its workflow's containment owners: whom to call when a request looks
like the workflow should be stopped."""

from __future__ import annotations

import pytest
from django.urls import reverse

from governance import services
from governance.models import ContainmentAssignment
from tests import factories

pytestmark = pytest.mark.django_db


def test_queue_rows_name_the_containment_owners_and_their_duties(client, approver, make_request, workflow,
                                                                  containment_owner, admin_user):
    for duty in ContainmentAssignment.Duty.values:
        services.assign_containment(workflow.pk, actor=admin_user, user=containment_owner, duty=duty)
    backup = factories.make_user("oscar")
    services.assign_containment(workflow.pk, actor=admin_user, user=backup, duty="pause", position="backup")
    make_request()
    client.force_login(approver)
    row = client.get(reverse("approvals:queue")).content.decode().split('class="queue-row')[1].split("</tr>")[0]
    assert "Containment: " in row
    assert "olivia (every duty)" in row and "oscar (pause (backup))" in row


def test_a_workflow_without_owners_says_so_in_the_queue(client, approver, make_request):
    make_request()
    client.force_login(approver)
    assert "No containment owner" in client.get(reverse("approvals:queue")).content.decode()
