"""AUD-03: the database itself refuses to change or remove audit rows.

As the application role (set up by `manage.py grant_app_role`: SELECT and INSERT only) every
mutation, trigger switch and replication-role trick is refused; as the owner the ALWAYS triggers
still refuse UPDATE, DELETE and TRUNCATE, also under session_replication_role = replica.
"""

from __future__ import annotations

import io

import pytest
from django.core.management import call_command
from django.db import DatabaseError, connection, transaction

from audit import log as audit
from tests import factories
from tests.governance.support import chain_stats

TABLE = "governance_auditevent"

APP_ROLE_ATTEMPTS = {
    "UPDATE": f"UPDATE {TABLE} SET reason = 'rewritten' WHERE seq = 1",
    "DELETE": f"DELETE FROM {TABLE} WHERE seq = 1",
    "TRUNCATE": f"TRUNCATE {TABLE}",
    "DISABLE TRIGGER": f"ALTER TABLE {TABLE} DISABLE TRIGGER {TABLE}_no_mod",
    "SET session_replication_role": "SET LOCAL session_replication_role = replica",
}
OWNER_ATTEMPTS = {
    "UPDATE": f"UPDATE {TABLE} SET reason = 'rewritten' WHERE seq = 1",
    "DELETE": f"DELETE FROM {TABLE} WHERE seq = 1",
    "TRUNCATE": f"TRUNCATE {TABLE}",
}


def _attempt(statement: str, *, role: str | None = None, replica: bool = False) -> str | None:
    """Run one statement in its own transaction; the error message if refused, None if it ran."""
    try:
        with transaction.atomic(), connection.cursor() as cursor:
            if replica:
                cursor.execute("SET LOCAL session_replication_role = replica")
            if role:
                cursor.execute(f"SET LOCAL ROLE {role}")
            cursor.execute(statement)
            # Whatever happened, nothing may stay: roll back even a statement that ran.
            transaction.set_rollback(True)
    except DatabaseError as exc:
        return str(exc).strip().splitlines()[0]
    return None


@pytest.fixture
def app_role(transactional_db):
    """A non-owner role with what grant_app_role gives the web and workers. Roles are cluster-wide,
    so the name carries this test database's name and the role is dropped afterwards."""
    role = f"{connection.settings_dict['NAME']}_app"[:63]
    with connection.cursor() as cursor:
        cursor.execute(f"DROP ROLE IF EXISTS {role}")
        cursor.execute(f"CREATE ROLE {role} NOLOGIN")
    try:
        call_command("grant_app_role", role, stdout=io.StringIO())
        yield role
    finally:
        with connection.cursor() as cursor:
            cursor.execute(f"DROP OWNED BY {role}")
            cursor.execute(f"DROP ROLE {role}")


@pytest.mark.django_db(transaction=True)
def test_app_role_and_owner_cannot_update_delete_or_truncate_audit_events(app_role, figures):
    factories.make_workflow("refund-agent")
    before_count, before_head = chain_stats().events, audit.head()
    assert before_count > 0

    # The app role can read and append (then this transaction is rolled back): all it needs.
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute(f"SET LOCAL ROLE {app_role}")
        event = audit.record("app-role-check", "test.appended", ("test.check", 1))
        assert event.seq == before_count + 1
        transaction.set_rollback(True)

    as_app = {name: _attempt(sql, role=app_role) for name, sql in APP_ROLE_ATTEMPTS.items()}
    as_owner = {name: _attempt(sql) for name, sql in OWNER_ATTEMPTS.items()}
    as_owner_replica = {name: _attempt(sql, replica=True) for name, sql in OWNER_ATTEMPTS.items()}

    for label, results in (("app role", as_app), ("owner", as_owner), ("owner, replica", as_owner_replica)):
        refused = sum(message is not None for message in results.values())
        figures(f"AUD-03 {label}: refused {refused}/{len(results)}")
    after_head = audit.head()
    figures(f"AUD-03 rows before={before_count} after={chain_stats().events}; "
            f"head before={before_head[1][:16]} after={after_head[1][:16]}")

    assert all(as_app.values()), as_app
    assert "permission denied" in as_app["UPDATE"] and "permission denied" in as_app["TRUNCATE"]
    assert "must be owner" in as_app["DISABLE TRIGGER"]
    assert "permission denied to set parameter" in as_app["SET session_replication_role"]
    assert all(as_owner.values()), as_owner
    assert all(as_owner_replica.values()), as_owner_replica
    assert all("append-only" in message for message in [*as_owner.values(), *as_owner_replica.values()])
    assert chain_stats().events == before_count
    assert after_head == before_head
    assert audit.verify_database().ok
