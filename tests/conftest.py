from __future__ import annotations

import pytest
from django.db import connection

from governance.permissions import Role
from tests import factories
from tests.support.flush import retry_flush_on_deadlock

retry_flush_on_deadlock()  # Celery workers kept across tests can deadlock a test's closing flush

AUDIT_TABLES = ("governance_auditevent", "governance_auditcheckpoint", "audit_entry", "audit_tree_node",
                "audit_tree_head")


@pytest.fixture(autouse=True)
def _audit_truncate_guard(request):
    """Transactional tests clean up with one TRUNCATE over all tables, which the audit trail's
    BEFORE TRUNCATE trigger refuses. Switch that trigger off just for the harness's flush and
    on again (ALWAYS) before the next test, so every test runs with the guard in force."""
    marker = request.node.get_closest_marker("django_db")
    transactional = bool(marker and (marker.kwargs.get("transaction") or (len(marker.args) > 0 and marker.args[0])))
    transactional = transactional or any(f in request.fixturenames for f in ("transactional_db", "live_server"))
    if not transactional:
        yield
        return
    request.getfixturevalue("transactional_db")
    _set_truncate_trigger("ENABLE ALWAYS")
    yield
    _set_truncate_trigger("DISABLE")


def _set_truncate_trigger(mode: str) -> None:
    if connection.vendor != "postgresql":
        return
    with connection.cursor() as cursor:
        for table in AUDIT_TABLES:
            cursor.execute(f"ALTER TABLE {table} {mode} TRIGGER {table}_no_trunc")


@pytest.fixture
def admin_user(db):
    return factories.make_admin("ada")


@pytest.fixture
def workflow(admin_user):
    return factories.make_workflow("refund-agent", actor=admin_user, autonomy_tier=2)


@pytest.fixture
def other_workflow(admin_user):
    return factories.make_workflow("account-disable-agent", actor=admin_user, autonomy_tier=3)


@pytest.fixture
def approver(workflow):
    user = factories.make_user("alice", role=Role.APPROVER)
    factories.scope(user, workflow)
    return user


@pytest.fixture
def senior_approver(workflow):
    user = factories.make_user("sam", role=Role.SENIOR_APPROVER)
    factories.scope(user, workflow)
    return user


@pytest.fixture
def containment_owner(workflow):
    user = factories.make_user("olivia", role=Role.CONTAINMENT_OWNER)
    factories.scope(user, workflow)
    return user


@pytest.fixture
def outsider(db):
    """An approver with no object permission on any workflow."""
    return factories.make_user("mallory", role=Role.APPROVER)


@pytest.fixture
def auditor(db):
    return factories.make_user("aude", role=Role.AUDITOR)


@pytest.fixture(autouse=True)
def _fast_password_hashing(settings):
    """Test users are created by the dozen on a shared 2-core machine; PBKDF2 at its production
    cost takes seconds per user there. Hashing strength is not what these tests check."""
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


@pytest.fixture
def celery_worker_and_beat(transactional_db):
    """A real `celery -A config worker` and `beat` (sweeping every 0.5 s) on the test database
    and the test's Redis; stopped after the test. See tests/support/celery_processes.py."""
    from tests.support.celery_processes import celery_processes

    with celery_processes(sweep_seconds=0.5) as processes:
        yield processes


@pytest.fixture
def allow(settings):
    """Set the operator's allow-list of guarded addresses for the test: `allow("127.0.0.0/8")`; none
    until called (the suite's default allows loopback)."""
    def set_networks(*networks: str) -> None:
        settings.WEBHOOK_ALLOWED_NETWORKS = list(networks)
    set_networks()
    return set_networks
