"""AUD-10: partition-level tamper (TRUNCATE or DETACH of one month) needs partitions; the audit
tables have none. If the trail is ever partitioned, this fails and AUD-10 must be written."""

from __future__ import annotations

import pytest
from django.db import connection


@pytest.mark.django_db
def test_aud10_the_audit_trail_is_not_partitioned(figures):
    with connection.cursor() as cursor:
        cursor.execute("""
            SELECT c.relname, c.relkind, (SELECT count(*) FROM pg_inherits i WHERE i.inhparent = c.oid)
            FROM pg_class c WHERE c.relname IN ('governance_auditevent', 'governance_auditcheckpoint')
            ORDER BY c.relname""")
        tables = cursor.fetchall()
    figures("AUD-10 not applicable: " + ", ".join(f"{name} relkind {kind!r}, {children} partitions"
                                                  for name, kind, children in tables))
    assert [(kind, children) for _, kind, children in tables] == [("r", 0), ("r", 0)]
