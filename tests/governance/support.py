"""Helpers shared by the governance tests: chain statistics, "the refusal changed nothing",
racing threads that each use (and close) their own database connection, and the standalone
offline verifier run as a separate program."""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import sys
import threading
from collections.abc import Callable, Iterable
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
from django.contrib.auth.models import User
from django.db import connection

from audit import log as audit
from audit.models import AuditCheckpoint, AuditEvent
from core.errors import TransitionRefused
from governance.models import (
    ApiToken,
    ContainmentAssignment,
    GovernedAction,
    ServiceAccount,
    Workflow,
    WorkflowGroupObjectPermission,
    WorkflowUserObjectPermission,
)

ROOT = Path(__file__).resolve().parents[2]
VERIFIER = ROOT / "audit" / "verify_audit.py"


# --- the chain ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class ChainStats:
    events: int
    first_seq: int | None
    last_seq: int | None
    gaps: int  # seq values missing between 1 and the head
    forks: int  # events sharing a prev_hash with another event
    broken_links: int  # events whose prev_hash is not the hash of the event before them

    @property
    def linear(self) -> bool:
        return self.gaps == 0 and self.forks == 0 and self.broken_links == 0 and self.first_seq in (None, 1)


def chain_stats() -> ChainStats:
    with connection.cursor() as cursor:
        cursor.execute("SELECT count(*), min(seq), max(seq), count(*) - count(DISTINCT prev_hash) "
                       "FROM governance_auditevent")
        events, first, last, forks = cursor.fetchone()
        cursor.execute("SELECT count(*) FROM (SELECT seq, prev_hash, lag(hash) OVER (ORDER BY seq) AS before "
                       "FROM governance_auditevent) AS links WHERE before IS NOT NULL AND prev_hash <> before")
        broken = cursor.fetchone()[0]
    gaps = (last - events) if events else 0
    return ChainStats(events, first, last, gaps, forks, broken)


# --- "the refusal changed nothing" -------------------------------------------------------------

STATE_MODELS = (
    Workflow, GovernedAction, ContainmentAssignment, WorkflowUserObjectPermission, WorkflowGroupObjectPermission,
    ServiceAccount, ServiceAccount.workflows.through, ApiToken, AuditEvent, AuditCheckpoint, User,
    User.groups.through,
)


def database_state() -> dict[str, list[dict]]:
    """Every row a governance service could touch, for before/after comparisons (signing in,
    which only moves last_login, is not a change)."""
    state = {model._meta.label: list(model.objects.order_by("pk").values()) for model in STATE_MODELS}
    for row in state["auth.User"]:
        row.pop("last_login")
    return state


@contextmanager
def refused(code: str):
    """Expect a TransitionRefused with `code` and that no row changed and no audit event was written."""
    before = database_state()
    with pytest.raises(TransitionRefused) as info:
        yield info
    assert info.value.code == code, f"refused with {info.value.code}: {info.value.message}"
    after = database_state()
    assert after["audit.AuditEvent"] == before["audit.AuditEvent"], "a refusal wrote an audit event"
    assert after == before, "a refusal changed the database"


def events_since(seq: int, action: str | None = None) -> list[AuditEvent]:
    events = AuditEvent.objects.filter(seq__gt=seq).order_by("seq")
    return list(events.filter(action=action) if action else events)


def head_seq() -> int:
    return audit.head()[0]


# --- racing threads ----------------------------------------------------------------------------

def race(threads: int, work: Callable[[int, Callable[[], None]], object], *, timeout: float = 120) -> list:
    """Run work(index, go) in `threads` threads; go() waits until every thread is ready.

    Each thread uses its own database connection and closes it when done.
    """
    barrier = threading.Barrier(threads, timeout=timeout)
    results: list = [None] * threads
    errors: list[BaseException] = []

    def run(index: int) -> None:
        try:
            results[index] = work(index, barrier.wait)
        except BaseException as exc:  # reported in the test's thread
            errors.append(exc)
            barrier.abort()
        finally:
            connection.close()

    pool = [threading.Thread(target=run, args=(i,), name=f"writer-{i}") for i in range(threads)]
    for thread in pool:
        thread.start()
    for thread in pool:
        thread.join(timeout)
    assert not any(thread.is_alive() for thread in pool), "a thread did not finish in time"
    if errors:
        raise errors[0]
    return results


def percentile(values: Iterable[float], pct: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return 0.0
    return ordered[min(len(ordered) - 1, round(pct / 100 * (len(ordered) - 1)))]


# --- the standalone verifier -------------------------------------------------------------------

def standalone_python() -> str:
    """The system Python when there is one: the verifier needs nothing but the standard library."""
    return shutil.which("python3", path="/usr/bin:/bin") or sys.executable


def run_verifier(export: Path, *args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("AUDIT_CHECKPOINT_KEY", "PYTHONPATH")}
    return subprocess.run([standalone_python(), str(VERIFIER), str(export), *args], capture_output=True,
                          text=True, timeout=120, env=env, cwd="/")


def export_lines() -> list[str]:
    """The database chain in the export format: events in seq order, each checkpoint after the
    event it signs."""
    checkpoints: dict[int, list[AuditCheckpoint]] = {}
    for cp in AuditCheckpoint.objects.order_by("created_at", "id"):
        checkpoints.setdefault(cp.head_seq, []).append(cp)
    lines = [audit.checkpoint_line(cp) for cp in checkpoints.pop(0, [])]
    for event in AuditEvent.objects.order_by("seq").iterator(chunk_size=2000):
        lines.append(audit.export_line(event))
        lines.extend(audit.checkpoint_line(cp) for cp in checkpoints.pop(event.seq, []))
    assert not checkpoints, "a checkpoint names an event that is not in the database"
    return lines


# --- a separate process with production-like settings ------------------------------------------

# What the test harness sets for itself; a production process has none of it.
TEST_ONLY = ("RINGFENCE_TESTING", "RINGFENCE_TEST_DATABASE_URL", "RINGFENCE_TEST_REDIS_URL", "DJANGO_SETTINGS_MODULE",
             "PYTEST_CURRENT_TEST", "DEBUG")


def production_env(tmp_path: Path, **overrides: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in TEST_ONLY}
    env.update({
        "DATABASE_URL": "postgres://ringfence_app:secret@db.internal:5432/ringfence",
        "CELERY_BROKER_URL": "redis://redis.internal:6379/0",
        "REDIS_URL": "redis://redis.internal:6379/1",
        "SECRET_KEY": secrets.token_urlsafe(64),
        "AUDIT_CHECKPOINT_KEY": secrets.token_hex(32),
        "ROLLOUT_WEBHOOK_SECRET": secrets.token_hex(32),
        "ALLOWED_HOSTS": "ringfence.example.com",
        "CSRF_TRUSTED_ORIGINS": "https://ringfence.example.com",
        "HTTPS": "true",
        "RINGFENCE_VAR_DIR": str(tmp_path / "var"),
    })
    env.update(overrides)
    return env


def manage(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "manage.py", *args], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=120)
