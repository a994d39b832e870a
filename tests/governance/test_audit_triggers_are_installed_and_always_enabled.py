"""AUD-04: after migrate, the append-only triggers exist on both audit tables and are ENABLE ALWAYS
(so session_replication_role = replica does not skip them); the TRUNCATE one is statement-level."""

from __future__ import annotations

import pytest
from django.db import connection

ROW, BEFORE, DELETE, UPDATE, TRUNCATE = 1, 2, 8, 16, 32  # pg_trigger.tgtype bits
TABLES = ("governance_auditevent", "governance_auditcheckpoint", "audit_entry", "audit_tree_node", "audit_tree_head")


@pytest.mark.django_db(transaction=True)  # the harness switches the TRUNCATE guard back on for these
def test_append_only_triggers_are_enabled_always_and_truncate_is_statement_level(figures):
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT c.relname, t.tgname, t.tgenabled, t.tgtype, p.proname FROM pg_trigger t "
            "JOIN pg_class c ON c.oid = t.tgrelid JOIN pg_proc p ON p.oid = t.tgfoid "
            "WHERE c.relname = ANY(%s) AND NOT t.tgisinternal ORDER BY 1, 2",
            [list(TABLES)],
        )
        triggers = {(table, name): (enabled, tgtype, function) for table, name, enabled, tgtype, function in cursor}
    figures(f"AUD-04 triggers={len(triggers)} enabled={sorted({e for e, _, _ in triggers.values()})}")

    assert set(triggers) == {(t, f"{t}_{kind}") for t in TABLES for kind in ("no_mod", "no_trunc")}
    for (_table, name), (enabled, tgtype, function) in triggers.items():
        assert enabled == "A", f"{name} is {enabled!r}, not ENABLE ALWAYS"
        assert function == "ringfence_audit_refuse"
        assert tgtype & BEFORE, f"{name} must fire before the change"
        if name.endswith("_no_mod"):
            assert tgtype & ROW and tgtype & UPDATE and tgtype & DELETE, f"{name}: {tgtype:#b}"
        else:
            assert tgtype & TRUNCATE and not tgtype & ROW, f"{name} must be a statement-level TRUNCATE trigger"


@pytest.mark.django_db(transaction=True)
def test_nobody_but_the_owner_has_privileges_through_public():
    with connection.cursor() as cursor:
        for table in TABLES:
            for privilege in ("SELECT", "INSERT", "UPDATE", "DELETE", "TRUNCATE"):
                cursor.execute("SELECT has_table_privilege('public', %s, %s)", [table, privilege])
                assert cursor.fetchone()[0] is False, f"PUBLIC holds {privilege} on {table}"
