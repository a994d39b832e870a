"""The audit and idempotency models moved from `governance` to the `audit` and `core` apps with
their tables kept: a database made before the move migrates with every row, the chain and its
checkpoints still verify, and the append-only triggers still hold."""

from __future__ import annotations

import datetime as dt
import json
import subprocess
import sys
import uuid
from pathlib import Path

import psycopg
import pytest
from django.conf import settings
from django.db import connection

from audit.log import format_time, unsequenced_canonical
from audit.sequencing import with_seq
from audit.verify_audit import GENESIS, chain_hash, sign_checkpoint
from tests.support.celery_processes import ROOT, current_database_url, process_env

pytestmark = pytest.mark.django_db

OLD_LAYOUT = ("governance", "0007_workflow_holidays")  # the last migration before the move


def _manage(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    result = subprocess.run([sys.executable, "manage.py", *args], cwd=ROOT, env=env, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    return result


@pytest.fixture
def old_database(tmp_path: Path):
    """A database of its own, migrated only as far as the old layout."""
    name = f"rf_layout_{uuid.uuid4().hex[:10]}"
    admin_url = current_database_url()
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    url = admin_url.rsplit("/", 1)[0] + "/" + name
    (tmp_path / "var").mkdir()
    env = process_env(tmp_path, 1.0, {"DATABASE_URL": url})
    try:
        yield url, env
    finally:
        with psycopg.connect(admin_url, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _old_rows(cur: psycopg.Cursor) -> tuple[int, str]:
    """Write three chained events, a signed checkpoint and an idempotency key the way the old
    layout stored them (same tables, same canonical bytes)."""
    cur.execute("INSERT INTO auth_user (password, is_superuser, username, first_name, last_name, email, is_staff,"
                " is_active, date_joined) VALUES ('!', false, 'olduser', '', '', '', false, true, now()) RETURNING id")
    user_id = cur.fetchone()[0]
    prev = GENESIS
    at = dt.datetime(2026, 11, 1, 9, 0, tzinfo=dt.UTC)
    for seq in (1, 2, 3):
        columns = {"occurred_at": at + dt.timedelta(seconds=seq), "actor_kind": "user", "actor_id": str(user_id),
                   "actor_label": "olduser", "action": "workflow.updated", "subject_type": "governance.workflow",
                   "subject_id": "1", "workflow_slug": "refund-agent", "reason": f"change {seq}",
                   "data": {"n": seq}}
        canonical = with_seq(unsequenced_canonical(columns), seq)
        event_hash = chain_hash(prev, canonical)
        cur.execute(
            "INSERT INTO governance_auditevent (seq, occurred_at, actor_kind, actor_id, actor_label, action,"
            " subject_type, subject_id, workflow_slug, reason, data, canonical, prev_hash, hash)"
            " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)",
            [seq, columns["occurred_at"], "user", str(user_id), "olduser", columns["action"], columns["subject_type"],
             "1", "refund-agent", columns["reason"], json.dumps(columns["data"]), canonical, prev, event_hash])
        prev = event_hash
    signed_at = at + dt.timedelta(minutes=5)
    cur.execute("INSERT INTO governance_auditcheckpoint (created_at, head_seq, head_hash, signature, reason)"
                " VALUES (%s, 3, %s, %s, 'interval')",
                [signed_at, prev, sign_checkpoint(settings.AUDIT_CHECKPOINT_KEY, 3, prev, format_time(signed_at))])
    cur.execute("INSERT INTO governance_idempotencykey (user_id, key, fingerprint, method, path, state,"
                " response_status, response_content_type, response_body, created_at, expires_at)"
                " VALUES (%s, 'k-1', 'f', 'POST', '/api/v1/x', 'completed', 201, 'application/json', '{}', now(),"
                " now() + interval '1 day')", [user_id])
    return 3, prev


def test_a_database_made_on_the_old_layout_keeps_every_row_and_its_proofs(old_database):
    url, env = old_database
    _manage(env, "migrate", *OLD_LAYOUT, "--noinput")
    with psycopg.connect(url, autocommit=True) as conn, conn.cursor() as cur:
        head_seq, head_hash = _old_rows(cur)

    _manage(env, "migrate", "--noinput")
    verified = _manage(env, "verify_audit")
    assert verified.stdout.startswith("OK: 3 events, head #3"), verified.stdout
    assert "1 checkpoint(s) verified" in verified.stdout
    counted = _manage(env, "shell", "-c", (
        "from audit.models import AuditEvent, AuditCheckpoint; from core.models import IdempotencyKey; "
        "print(AuditEvent.objects.count(), AuditCheckpoint.objects.count(), IdempotencyKey.objects.count(), "
        "AuditEvent.objects.order_by('-seq').values_list('hash', flat=True).first())"))
    assert counted.stdout.splitlines()[-1].split() == ["3", "1", "1", head_hash]

    with psycopg.connect(url, autocommit=True) as conn:
        with pytest.raises(psycopg.Error, match="append-only"):
            conn.execute("UPDATE governance_auditevent SET reason = 'rewritten' WHERE seq = %s", [head_seq])
        with pytest.raises(psycopg.Error, match="append-only"):
            conn.execute("DELETE FROM governance_auditevent WHERE seq = 1")
    assert connection.vendor == "postgresql"
