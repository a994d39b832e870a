"""An agent action dispatch allowed at tier 1 waits for a containment owner's review beside the
rollout actions: the page says what ran, for whom, why, and what came of it."""

from __future__ import annotations

import datetime as dt

import pytest
import time_machine
from django.urls import reverse

from approvals import dispatch, executions
from audit.models import AuditEvent
from governance import services as governance
from governance.models import ContainmentAssignment
from governance.permissions import Role
from rollouts.models import ActionReview
from tests import factories

REVIEWS = reverse("rollouts:reviews")
AT = dt.datetime(2026, 3, 2, 10, 0, tzinfo=dt.UTC)


@pytest.fixture
def allowed(workflow, admin_user, containment_owner):
    """send_receipt (low risk) allowed at tier 1, run and reported; olivia holds the pause duty."""
    governance.update_workflow(workflow.pk, actor=admin_user, autonomy_tier=1, off_hours_tier=None)
    governance.assign_containment(workflow.pk, actor=admin_user, user=containment_owner,
                                  duty=ContainmentAssignment.Duty.PAUSE)
    governance.define_action(workflow.pk, actor=admin_user, name="send_receipt", risk="low")
    owner = factories.make_user("rhea", role=Role.RELEASE_MANAGER)
    factories.scope(owner, workflow)
    agent = factories.make_service_account("receipt-bot", owner=owner, workflows=[workflow])
    with time_machine.travel(AT, tick=False):
        answer = dispatch.dispatch(account=agent, workflow="refund-agent", action="send_receipt",
                                   parameters={"order": "A-1001"}, evidence={})
    assert answer.decision == "allow", answer.reason
    with time_machine.travel(AT + dt.timedelta(seconds=4), tick=False):
        executions.report_outcome(answer.execution.pk, account=agent, status="succeeded", detail="mail queued")
    return ActionReview.objects.get(execution=answer.execution)


def test_review_of_an_agent_action_says_what_ran_and_records_the_verdict(client, containment_owner, allowed):
    client.force_login(containment_owner)
    html = client.get(REVIEWS).content.decode()
    card = html.split(f'id="review-{allowed.pk}"')[1].split("</article>")[0]
    assert "Agent action <code>send_receipt</code> on refund-agent" in card
    assert "receipt-bot" in card and "2026-03-02 10:00:00 UTC · tier 1" in card
    assert "low risk runs without approval at tier 1" in card and "{&quot;order&quot;: &quot;A-1001&quot;}" in card
    assert "Succeeded" in card and "mail queued" in card

    before = AuditEvent.objects.count()
    done = client.post(reverse("rollouts:review", args=[allowed.pk]), {"verdict": "correct", "note": "as expected"},
                       headers={"HX-Request": "true"})
    assert done.status_code == 200
    assert "Correct" in done.content.decode() and "send_receipt" in done.content.decode()
    review = ActionReview.objects.get(pk=allowed.pk)
    assert (review.verdict, review.reviewed_by) == ("correct", containment_owner)
    event = AuditEvent.objects.get(seq=before + 1)
    assert event.action == "rollout.action_reviewed" and event.data["execution"] == allowed.execution_id
    assert (event.subject_type, event.subject_id) == ("approvals.execution", str(allowed.execution_id))
    assert event.reason == "as expected"

    html = client.get(REVIEWS).content.decode()
    assert "Nothing waits for your review." in html
    assert f"agent action <code>send_receipt</code> (execution #{allowed.execution_id})" in html


def test_a_false_positive_needs_a_reason_here_too(client, containment_owner, allowed):
    client.force_login(containment_owner)
    refused = client.post(reverse("rollouts:review", args=[allowed.pk]), {"verdict": "false_positive"})
    assert refused.status_code == 422 and "Say why it was a false positive" in refused.content.decode()
    assert ActionReview.objects.get(pk=allowed.pk).is_pending
