from __future__ import annotations

import pytest
from django.db import connection, transaction

from audit import log as audit
from audit.models import AuditEvent
from audit.verify_audit import GENESIS, chain_hash


@pytest.mark.django_db(transaction=True)
def test_record_refuses_to_run_outside_a_transaction(workflow):
    """In autocommit mode an event could be committed without the change it describes (or the
    change without its event), so record() refuses and writes nothing."""
    assert not connection.in_atomic_block
    before = AuditEvent.objects.count()
    with pytest.raises(audit.AuditError, match="inside the transaction"):
        audit.record(None, "test.event", workflow)
    assert AuditEvent.objects.count() == before


def test_events_link_to_their_predecessor_and_hash_their_contents(workflow):
    first = AuditEvent.objects.order_by("seq").first()
    assert first.seq == 1 and first.prev_hash == GENESIS
    with transaction.atomic():
        event = audit.record("system:test", "test.event", workflow, data={"n": 1.5}, reason="why")
    previous = AuditEvent.objects.get(seq=event.seq - 1)
    assert event.prev_hash == previous.hash
    assert event.hash == chain_hash(event.prev_hash, event.canonical)
    assert audit.event_payload(event)["data"] == {"n": "1.5"}
    assert audit.verify_database().ok


@pytest.mark.parametrize("action", ["workflow.paused\n", "Workflow.paused", "paused", "workflow." + "x" * 60])
def test_malformed_actions_are_refused(workflow, action):
    before = audit.head()
    with pytest.raises(audit.AuditError, match="action"), transaction.atomic():
        audit.record(None, action, workflow)
    assert audit.head() == before


def test_values_longer_than_their_column_are_refused_before_the_insert(workflow):
    before = audit.head()
    with pytest.raises(audit.AuditError, match="longer than"), transaction.atomic():
        audit.record("x" * 151, "test.event", workflow)
    with pytest.raises(audit.AuditError, match="longer than"), transaction.atomic():
        audit.record(None, "test.event", ("test.thing", "1" * 65))
    assert audit.head() == before


def test_the_database_columns_must_agree_with_the_hashed_contents(workflow):
    """verify_database reads the chain from the columns too: a column that disagrees with the
    hashed bytes (here the reason, changed with the append-only trigger out of the way) is an
    altered event."""
    with transaction.atomic():
        event = audit.record(None, "test.event", workflow, reason="as recorded")
    with connection.cursor() as cursor:
        cursor.execute("ALTER TABLE governance_auditevent DISABLE TRIGGER governance_auditevent_no_mod")
        cursor.execute("UPDATE governance_auditevent SET reason = 'rewritten' WHERE seq = %s", [event.seq])
        cursor.execute("ALTER TABLE governance_auditevent ENABLE ALWAYS TRIGGER governance_auditevent_no_mod")
    report = audit.verify_database()
    assert not report.ok and report.first_broken_seq == event.seq
