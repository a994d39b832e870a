from __future__ import annotations

import datetime as dt

import pytest
import time_machine
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse

from approvals import services
from approvals.models import ApprovalRequest, Decision
from audit.models import AuditEvent
from tests import factories

State = ApprovalRequest.State
T0 = dt.datetime(2026, 3, 2, 10, 0, tzinfo=dt.UTC)  # a Monday, inside business hours
QUEUE = reverse("approvals:queue")
HTMX = {"HTTP_HX_REQUEST": "true"}


def rows_in_order(html: str, ids: list[int]) -> list[int]:
    return sorted(ids, key=lambda pk: html.index(f'data-request="{pk}"'))


@pytest.fixture
def frozen():
    with time_machine.travel(T0, tick=False) as traveller:
        yield traveller


def test_queue_lists_most_urgent_first_with_evidence(client, approver, make_request, frozen):
    later = make_request(idempotency_key="later")
    frozen.shift(dt.timedelta(minutes=3))
    sooner = make_request(mode="override_window", idempotency_key="sooner", kind="rollback", action="roll_back")
    client.force_login(approver)
    response = client.get(QUEUE)
    html = response.content.decode()
    assert response.status_code == 200
    assert rows_in_order(html, [later.pk, sooner.pk]) == [sooner.pk, later.pk]
    assert "refund_amount 120 &gt; 50" in html and "82 %" in html and "refund-bot" in html
    assert f'datetime="{sooner.due_at.isoformat()}"' in html
    assert "override window" in html


def test_htmx_refresh_gets_only_the_results(client, approver, make_request):
    make_request()
    client.force_login(approver)
    response = client.get(QUEUE + "?kind=agent_action", **HTMX)
    html = response.content.decode()
    assert response.status_code == 200
    assert html.lstrip().startswith('<section id="queue-results"') and "<html" not in html
    assert 'hx-trigger="every 5s"' in html and "kind=agent_action" in html
    assert "HX-Request" in response["Vary"]


def test_queue_filters_by_workflow_kind_escalation_and_assignment(client, approver, senior_approver, make_request,
                                                                 other_workflow, agent, frozen):
    factories.scope(approver, other_workflow)
    agent.workflows.add(other_workflow)
    refund = make_request(idempotency_key="a")
    frozen.shift(dt.timedelta(minutes=5))
    disable = make_request(workflow=other_workflow, action="disable_account", idempotency_key="b")
    rollback = make_request(kind="rollback", action="roll_back", mode="override_window", idempotency_key="c")
    frozen.shift(dt.timedelta(minutes=5, seconds=1))
    services.handle_all_due()
    escalated = ApprovalRequest.objects.get(pk=refund.pk)
    assert escalated.level == 1

    client.force_login(approver)

    def listed(query: str) -> set[int]:
        html = client.get(QUEUE + query).content.decode()
        return {pk for pk in (refund.pk, disable.pk, rollback.pk) if f'data-request="{pk}"' in html}

    assert listed("") == {refund.pk, disable.pk}  # the rollback's window ran out meanwhile
    assert listed("?workflow=account-disable-agent") == {disable.pk}
    assert listed("?kind=agent_action&escalated=on") == {refund.pk}
    assert listed("?mine=on") == {disable.pk}  # the escalated one is now the senior approver's

    client.force_login(senior_approver)
    html = client.get(QUEUE + "?mine=on").content.decode()
    assert f'data-request="{refund.pk}"' in html and "escalated · level 2" in html


def test_nobody_sees_requests_outside_their_scope(client, outsider, requester, make_request):
    req = make_request()
    client.force_login(outsider)
    assert f'data-request="{req.pk}"' not in client.get(QUEUE).content.decode()
    assert client.get(req.get_absolute_url()).status_code == 404
    response = client.post(reverse("approvals:decide", args=[req.pk]), {"verdict": "approve"})
    assert response.status_code == 404
    client.force_login(requester)  # in scope, but four-eyes: not in their queue
    assert f'data-request="{req.pk}"' not in client.get(QUEUE).content.decode()
    assert not Decision.objects.exists()


def test_approve_without_javascript_posts_redirects_and_shows_the_outcome(client, approver, make_request):
    req = make_request()
    client.force_login(approver)
    response = client.post(reverse("approvals:decide", args=[req.pk]), {"verdict": "approve", "justification": ""})
    assert response.status_code == 302 and response["Location"] == req.get_absolute_url()
    page = client.get(response["Location"]).content.decode()
    assert "Approved by alice at" in page and "decided: approve" in page
    assert ApprovalRequest.objects.get(pk=req.pk).state == State.APPROVED


def test_empty_justification_is_a_form_error_and_changes_nothing(client, approver, make_request):
    req = make_request()
    client.force_login(approver)
    events = AuditEvent.objects.count()
    url = reverse("approvals:decide", args=[req.pk])
    for extra in ({}, HTMX):
        response = client.post(url, {"verdict": "reject", "justification": "  "}, **extra)
        html = response.content.decode()
        assert response.status_code == 422
        assert "Say why: rejecting or overriding needs a justification." in html
        assert 'aria-invalid="true"' in html
    assert "<html" not in html  # the htmx answer is the panel (and the history, out of band)
    assert ApprovalRequest.objects.get(pk=req.pk).state == State.PENDING
    assert AuditEvent.objects.count() == events


def test_stale_page_is_told_who_decided_and_nothing_changes(client, approver, second_approver, make_request, frozen):
    req = make_request()
    services.record_decision(req.pk, actor=second_approver, verdict="approve")
    client.force_login(approver)
    events = AuditEvent.objects.count()
    response = client.post(reverse("approvals:decide", args=[req.pk]),
                           {"verdict": "reject", "justification": "Too big."}, **HTMX)
    assert response.status_code == 409
    assert "Already approved by Bob at 10:00." in response.content.decode()
    assert Decision.objects.filter(request=req).count() == 1
    assert AuditEvent.objects.count() == events


def test_requester_gets_a_refusal_they_can_act_on(client, approver, workflow):
    req = services.create_request(workflow=workflow, kind="policy_change", action="raise_limit", requester=approver)
    client.force_login(approver)
    page = client.get(req.get_absolute_url()).content.decode()
    assert "someone else must decide it" in page and 'value="approve"' not in page
    response = client.post(reverse("approvals:decide", args=[req.pk]), {"verdict": "approve"}, **HTMX)
    assert response.status_code == 403
    assert "someone else must decide it" in response.content.decode()
    assert not Decision.objects.exists()


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"verdict": "override", "justification": "x" * 102_400, "reason": "noise"}, "at most 5000 characters"),
        ({"verdict": "override", "justification": "Expected: migration."}, "Choose why you override"),
        ({"verdict": "reject", "justification": "no"}, "can be answered with approve or override"),
        ({"justification": "no"}, "Choose Approve, Reject or Override."),
    ],
)
def test_bad_decision_input_is_a_form_error_and_changes_nothing(client, approver, make_request, data, message):
    req = make_request(mode="override_window", kind="rollback", action="roll_back")
    client.force_login(approver)
    events = AuditEvent.objects.count()
    response = client.post(reverse("approvals:decide", args=[req.pk]), data)
    assert response.status_code == 422
    assert message in response.content.decode()
    assert ApprovalRequest.objects.get(pk=req.pk).state == State.PENDING
    assert not Decision.objects.exists() and AuditEvent.objects.count() == events


def test_markup_in_a_justification_is_shown_as_text(client, approver, make_request):
    req = make_request()
    client.force_login(approver)
    client.post(reverse("approvals:decide", args=[req.pk]),
                {"verdict": "reject", "justification": '<script>alert("x")</script> <b>no</b>'})
    page = client.get(req.get_absolute_url()).content.decode()
    assert "<script>alert" not in page and "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;" in page
    assert "&lt;b&gt;no&lt;/b&gt;" in page


def test_evidence_links_only_allow_web_addresses(client, approver, make_request):
    req = make_request(evidence={"links": [{"label": "dash", "url": "https://grafana.example/d/1"},
                                           {"label": "evil", "url": "javascript:alert(1)"}]})
    client.force_login(approver)
    page = client.get(req.get_absolute_url()).content.decode()
    assert 'href="https://grafana.example/d/1"' in page and "javascript:" not in page


def test_queue_query_count_does_not_grow_with_the_queue(client, approver, make_request):
    client.force_login(approver)
    make_request(idempotency_key="k0")
    client.get(QUEUE)  # warm the session and the role cache
    with CaptureQueriesContext(connection) as few:
        client.get(QUEUE)
    for i in range(1, 30):
        make_request(idempotency_key=f"k{i}", quorum=2 if i % 2 else 1)
    with CaptureQueriesContext(connection) as many:
        html = client.get(QUEUE).content.decode()
    assert html.count('class="queue-row') == 30
    assert len(many) == len(few), [q["sql"][:120] for q in many.captured_queries]
