from __future__ import annotations

import re

import pytest
from django.urls import reverse

from audit.models import AuditEvent

SEARCH = reverse("audit:log")


def seqs_on_page(response) -> list[int]:
    return [int(s) for s in re.findall(r'href="/audit/events/(\d+)/"', response.content.decode())]


@pytest.fixture
def auditor_client(client, auditor):
    client.force_login(auditor)
    return client


def test_auditor_searches_by_workflow_actor_action_and_words(auditor_client, decision_log, workflow):
    refund = decision_log[:3]
    assert seqs_on_page(auditor_client.get(SEARCH, {"workflow": workflow.slug, "action": "approval.",
                                                    "actor": "ALI"})) == [refund[1].seq, refund[0].seq]
    assert seqs_on_page(auditor_client.get(SEARCH, {"words": "double-charged refund"})) == [refund[0].seq]
    assert seqs_on_page(auditor_client.get(SEARCH, {"words": "error_rate", "actor": "rollouts"})) == [refund[2].seq]


def test_auditor_searches_by_subject_and_time_range(auditor_client, decision_log):
    escalated_request = decision_log[3:]
    assert seqs_on_page(auditor_client.get(SEARCH, {"subject": "approvals.approvalrequest:9"})) == [
        e.seq for e in reversed(escalated_request)]
    assert seqs_on_page(auditor_client.get(SEARCH, {"subject": "rollouts.rolloutplan"})) == [decision_log[2].seq]
    in_window = auditor_client.get(SEARCH, {"since": "2026-03-02T10:00", "until": "2026-03-02T12:00"})
    assert seqs_on_page(in_window) == [decision_log[2].seq, decision_log[1].seq]


def test_reversed_time_range_is_refused_with_the_reason(auditor_client, decision_log):
    response = auditor_client.get(SEARCH, {"since": "2026-03-03T10:00", "until": "2026-03-02T12:00"})
    assert response.status_code == 422
    assert "must come after its start" in response.content.decode()


def test_results_are_paginated_newest_first(auditor_client, decision_log):
    total = AuditEvent.objects.count()
    first = auditor_client.get(SEARCH)
    assert seqs_on_page(first)[0] == total and len(seqs_on_page(first)) == min(total, 50)
    assert f"Export these {total} events" in first.content.decode()


def test_approver_sees_only_the_events_of_their_workflows(client, approver, decision_log, workflow, other_workflow):
    client.force_login(approver)
    seen = seqs_on_page(client.get(SEARCH))
    visible = set(AuditEvent.objects.filter(workflow_slug=workflow.slug).values_list("seq", flat=True))
    assert seen and set(seen) <= visible
    assert decision_log[3].seq not in seen
    assert client.get(SEARCH, {"workflow": other_workflow.slug}).status_code == 422
    assert seqs_on_page(client.get(SEARCH, {"words": "Abuse"})) == []
    assert client.get(reverse("audit:event", args=[decision_log[3].seq])).status_code == 404


def test_event_page_shows_its_hashes_and_links_to_its_neighbours(auditor_client, decision_log):
    event = decision_log[1]
    page = auditor_client.get(reverse("audit:event", args=[event.seq])).content.decode()
    assert event.hash in page and event.prev_hash in page
    assert f'href="/audit/events/{event.seq - 1}/" rel="prev"' in page
    assert f'href="/audit/events/{event.seq + 1}/" rel="next"' in page
    assert "matches its contents" in page and "link broken" not in page
