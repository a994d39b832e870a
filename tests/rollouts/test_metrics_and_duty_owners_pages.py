"""Custom metrics on a page (define_metric: metric.defined), and every containment duty's owner on
the rollout plan page, with the way to the page that assigns them."""

from __future__ import annotations

import pytest
from django.urls import reverse

from audit import log as audit
from audit.models import AuditEvent
from rollouts.models import Metric
from tests import factories
from tests.governance.support import events_since, head_seq

pytestmark = pytest.mark.django_db

URL = reverse("rollouts:metrics")


def state() -> dict:
    return {"metrics": list(Metric.objects.order_by("pk").values()),
            "events": list(AuditEvent.objects.order_by("seq").values_list("seq", flat=True))}


def test_a_release_manager_registers_and_changes_a_custom_metric(client, release_manager):
    client.force_login(release_manager)
    start = head_seq()
    response = client.post(URL, {"slug": "refund_error_rate", "label": "Refund errors", "unit": "",
                                 "direction": "lower_is_better"})
    assert response.status_code == 302 and response["Location"] == f"{URL}#metric-refund_error_rate"
    assert Metric.objects.get(slug="refund_error_rate").label == "Refund errors"
    page = client.get(URL, {"slug": "refund_error_rate"}).content.decode()
    assert "Change <code>refund_error_rate</code>" in page and 'value="Refund errors"' in page
    client.post(URL, {"slug": "refund_error_rate", "label": "Refund error rate", "direction": "lower_is_better"})
    assert [e.action for e in events_since(start)] == ["metric.defined", "metric.defined"]
    assert audit.event_payload(events_since(start)[1])["data"]["before"]["label"] == "Refund errors"


@pytest.mark.parametrize("data, status, field, message", [
    ({"slug": "latency_p95_ms", "label": "Mine"}, 409, "slug", "is a built-in metric"),
    ({"slug": "Refund Errors", "label": "Refund errors"}, 422, "slug", "Use lowercase letters"),
    ({"slug": "refund_errors", "label": ""}, 422, "label", "This field is required."),
    ({"slug": "refund_errors", "label": "x", "direction": "sideways"}, 422, "direction", "not one of the available"),
])
def test_a_refused_metric_is_shown_at_its_field_and_changes_nothing(client, release_manager, data, status, field,
                                                                     message):
    client.force_login(release_manager)
    before = state()
    response = client.post(URL, {"direction": "lower_is_better", **data})
    assert response.status_code == status
    assert message in " ".join(response.context["form"].errors[field])
    assert state() == before


def test_people_without_the_role_read_the_metrics_but_cannot_register_one(client, approver):
    client.force_login(approver)
    page = client.get(URL).content.decode()
    assert "latency_p95_ms" in page and "Register a metric" not in page
    before = state()
    response = client.post(URL, {"slug": "mine", "label": "Mine", "direction": "lower_is_better"})
    assert response.status_code == 403
    assert "Only administrators and release managers register metrics." in response.content.decode()
    assert state() == before


def test_the_plan_page_shows_every_dutys_owner_and_links_to_assigning_them(client, release_manager, make_plan,
                                                                           containment_owner, admin_user, workflow):
    from governance import services

    services.assign_containment(workflow.pk, actor=admin_user, user=containment_owner, duty="rollback")
    bob = factories.make_user("bob")
    services.assign_containment(workflow.pk, actor=admin_user, user=bob, duty="rollback", position="backup")
    plan = make_plan()
    client.force_login(release_manager)
    html = client.get(plan.get_absolute_url()).content.decode()
    owners = html.split('id="containment-owners"')[1].split("</section>")[0]
    assert "<td>Rollback</td>" in owners and "olivia" in owners and "bob" in owners
    assert owners.count("no owner") == 5
    assert f'href="/workflows/refund-agent/containment/?next={plan.get_absolute_url()}"' in owners
    assert "Assign or remove owners" in owners
