from __future__ import annotations

import pytest
from django.db import transaction

from governance import audit
from governance.models import AuditEvent
from governance.verify_audit import GENESIS, chain_hash


def test_record_refuses_to_run_outside_a_transaction(workflow):
    # pytest-django's db fixture wraps the test in a transaction; leave it with autocommit semantics.
    before = AuditEvent.objects.count()
    with pytest.raises(audit.AuditError, match="inside the transaction"):
        audit.record.__wrapped__ if hasattr(audit.record, "__wrapped__") else None
        from django.db import connection

        connection.in_atomic_block, saved = False, connection.in_atomic_block
        try:
            audit.record(None, "test.event", workflow)
        finally:
            connection.in_atomic_block = saved
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
