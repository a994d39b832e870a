from __future__ import annotations

import datetime as dt
import json

import pytest
import time_machine
from django.urls import reverse

from approvals import services as approvals
from audit import log as audit
from audit.verify_audit import chain_hash
from governance import services as governance
from governance.permissions import Role
from tests import factories

ASKED = dt.datetime(2026, 3, 3, 10, 0, tzinfo=dt.UTC)  # a Tuesday, 10:00 in London: business hours


@pytest.fixture
def decided_request(workflow, approver, admin_user):
    """A refund asked by an agent, escalated by its timer, then rejected with a justification.
    The workflow's tier changes afterwards: the bundle must show the tier in force when it was asked."""
    requester = factories.make_user("rhea", role=Role.RELEASE_MANAGER)
    factories.scope(requester, workflow)
    agent = factories.make_service_account("refund-bot", owner=requester, workflows=[workflow])
    governance.update_workflow(workflow.pk, actor=admin_user, timezone="Europe/London", autonomy_tier=3)
    with time_machine.travel(ASKED, tick=False):
        req = approvals.create_request(
            workflow=workflow, kind="agent_action", action="refund_customer", parameters={"order": "A-1001"},
            evidence={"summary": "refund above the automatic limit",
                      "metrics": [{"metric": "refund_amount", "value": 120, "operator": ">", "threshold": 50}]},
            requester=agent, confidence="0.82")
    senior = factories.make_user("sam", role=Role.SENIOR_APPROVER)
    factories.scope(senior, workflow)
    with time_machine.travel(req.due_at + dt.timedelta(seconds=1), tick=False):
        approvals.handle_due(req.pk)
    with time_machine.travel(req.due_at + dt.timedelta(seconds=30), tick=False):
        approvals.record_decision(req.pk, actor=senior, verdict="reject",
                                  justification="Order already refunded by hand.")
    governance.update_workflow(workflow.pk, actor=admin_user, autonomy_tier=1)
    with time_machine.travel(ASKED + dt.timedelta(hours=2), tick=False):
        audit.write_checkpoint("interval")
    req.refresh_from_db()
    return req


def test_bundle_holds_request_tier_policy_evidence_decisions_timers_outcome_and_hashed_events(client, auditor,
                                                                                              decided_request):
    client.force_login(auditor)
    response = client.get(reverse("evidence:json", args=[decided_request.pk]))
    assert response.status_code == 200 and "attachment" in response["Content-Disposition"]
    bundle = json.loads(response.content)
    assert bundle["request"]["action"] == "refund_customer" and bundle["request"]["requested_by"] == "refund-bot"
    assert bundle["in_force"]["tier"] == 3 and bundle["in_force"]["business_hours"] is True
    assert [level["timeout_seconds"] for level in bundle["in_force"]["policy"]["levels"]] == [600, 1200]
    assert bundle["evidence"]["metrics"][0] == {"metric": "refund_amount", "value": 120, "operator": ">",
                                                "threshold": 50}
    assert [(d["by"], d["verdict"], d["justification"]) for d in bundle["decisions"]] == [
        ("sam", "reject", "Order already refunded by hand.")]
    assert [e["level"] for e in bundle["timers"]["escalations"]] == [1]
    assert bundle["timers"]["seconds_to_close"] == 600 + 30
    assert bundle["outcome"]["state"] == "rejected"
    actions = [e["event"]["action"] for e in bundle["audit"]["events"]]
    assert actions == ["approval.requested", "approval.escalated", "approval.decided", "approval.rejected"]
    for entry in bundle["audit"]["events"]:
        assert entry["hash_ok"] and entry["hash"] == chain_hash(entry["prev_hash"],
                                                                audit.canonical_json(entry["event"]))
    assert bundle["audit"]["checkpoint"]["seq"] >= bundle["audit"]["events"][-1]["seq"]


def test_printable_bundle_shows_the_same_facts(client, auditor, decided_request):
    client.force_login(auditor)
    page = client.get(reverse("evidence:page", args=[decided_request.pk])).content.decode()
    for text in ("Order already refunded by hand.", "refund_amount", "rejected", "Autonomy tier", "approval.escalated",
                 '<style media="print">'):
        assert text in page


def test_bundle_is_out_of_reach_outside_scope(client, decided_request, other_workflow):
    outsider = factories.make_user("otto", role=Role.APPROVER)
    factories.scope(outsider, other_workflow)
    client.force_login(outsider)
    assert client.get(reverse("evidence:page", args=[decided_request.pk])).status_code == 404
    assert client.get(reverse("evidence:json", args=[decided_request.pk])).status_code == 404


def test_event_page_links_to_the_bundle(client, auditor, decided_request):
    client.force_login(auditor)
    event = audit.AuditEvent.objects.filter(subject_id=str(decided_request.pk), action="approval.decided").get()
    page = client.get(reverse("audit:event", args=[event.seq])).content.decode()
    assert reverse("evidence:page", args=[decided_request.pk]) in page
