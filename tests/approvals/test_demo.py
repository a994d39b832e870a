from __future__ import annotations

import datetime as dt

import time_machine
from django.contrib.auth.models import User

from approvals import demo, selectors, services
from approvals.models import ApprovalRequest
from audit import log as audit
from configuration import demo as configuration_demo
from governance import demo as governance_demo

State = ApprovalRequest.State


def test_the_demo_tells_the_queue_story_once_and_again_when_it_played_out(db):
    governance_demo.seed()
    configuration_demo.seed()
    first = demo.seed()
    assert first.created
    pending = ApprovalRequest.objects.pending()
    assert pending.filter(mode="override_window").count() == 1
    escalated = pending.get(level=1)
    assert escalated.action == "disable_account"
    near = pending.filter(workflow__slug="refund-agent", mode="gate").get()
    assert (near.due_at - near.created_at) == dt.timedelta(minutes=3)  # the refund policy's short first level
    assert set(ApprovalRequest.objects.exclude(state=State.PENDING).values_list("state", flat=True)) == {
        State.APPROVED, State.REJECTED, State.OVERRIDDEN, State.CANCELLED}

    assert demo.seed().created == []  # seeding again changes nothing
    sam = User.objects.get(username="sam")
    assert [r.pk for r in selectors.queue_for(sam)] == [escalated.pk]
    alice = User.objects.get(username="alice")
    assert set(selectors.queue_for(alice)) == set(pending)
    assert audit.verify_database().ok

    # Two hours later every timer has run out: seeding again starts a new round.
    with time_machine.travel(dt.datetime.now(dt.UTC) + dt.timedelta(hours=2)):
        services.handle_all_due()
        assert not ApprovalRequest.objects.pending().exists()
        again = demo.seed()
    assert len([c for c in again.created if c.startswith("pending")]) == 4
    assert ApprovalRequest.objects.pending().count() == 4
