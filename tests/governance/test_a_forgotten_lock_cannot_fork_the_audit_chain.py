"""AUD-02: writers that bypass record() and the sequencer get unique violations, never a fork; and the
events they slip in are named by the verifier, because the sequencer never placed them in the tree."""

from __future__ import annotations

import datetime as dt

import pytest
from django.db import IntegrityError, connection, transaction

from audit import log as audit
from audit.verify_audit import FORMAT_VERSION, GENESIS, canonical_json, chain_hash
from tests import factories
from tests.governance.support import chain_stats, race

WRITERS = 8
ATTEMPTS = 60

INSERT = """
INSERT INTO governance_auditevent (seq, occurred_at, actor_kind, actor_id, actor_label, action, subject_type,
                                   subject_id, workflow_slug, reason, data, canonical, prev_hash, hash)
VALUES (%s, %s, 'system', '', 'raw-writer', 'test.raw_append', 'test.raw', %s, '', '', '{}', %s, %s, %s)
"""


def _append_without_lock(writer: int, attempt: int) -> None:
    """Head read and insert with no pg_advisory_xact_lock: what a forgotten lock looks like."""
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute("SELECT seq, hash FROM governance_auditevent ORDER BY seq DESC LIMIT 1")
        head = cursor.fetchone()
        seq, prev_hash = (head[0] + 1, head[1]) if head else (1, GENESIS)
        at = dt.datetime.now(dt.UTC)
        subject_id = f"{writer}-{attempt}"
        canonical = canonical_json({
            "v": FORMAT_VERSION, "seq": seq, "at": audit.format_time(at),
            "actor": {"kind": "system", "id": "", "label": "raw-writer"}, "action": "test.raw_append",
            "subject": {"type": "test.raw", "id": subject_id}, "workflow": "", "data": {}, "reason": "",
        })
        cursor.execute(INSERT, [seq, at, subject_id, canonical, prev_hash, chain_hash(prev_hash, canonical)])


@pytest.mark.django_db(transaction=True)
def test_writers_without_the_lock_fail_loudly_and_leave_no_fork(figures):
    factories.make_workflow("refund-agent")  # a few real events first
    before = chain_stats()

    def writer(index: int, go) -> tuple[int, int, set[str]]:
        ok = failed = 0
        constraints: set[str] = set()
        go()
        for attempt in range(ATTEMPTS):
            try:
                _append_without_lock(index, attempt)
                ok += 1
            except IntegrityError as exc:
                failed += 1
                constraints.add(getattr(getattr(exc.__cause__, "diag", None), "constraint_name", "") or str(exc))
        return ok, failed, constraints

    results = race(WRITERS, writer)
    appended = sum(ok for ok, _, _ in results)
    failed = sum(bad for _, bad, _ in results)
    constraints = set().union(*(c for _, _, c in results))
    stats = chain_stats()
    report = audit.verify_database()
    figures(f"AUD-02 attempts={WRITERS * ATTEMPTS} appended={appended} unique violations={failed} "
            f"({failed / (WRITERS * ATTEMPTS):.0%}) forks={stats.forks} gaps={stats.gaps} "
            f"verifier={'OK' if report.ok else 'BROKEN'} constraints={sorted(constraints)}")

    assert appended + failed == WRITERS * ATTEMPTS
    assert stats.events == before.events + appended
    assert failed > 0, "eight unlocked writers never collided: the race was not exercised"
    assert stats.linear, stats
    assert not report.ok and f"tree node 0/{before.events} is missing" in report.summary(), report.summary()
    assert all("seq" in name or "pkey" in name or "prev_hash" in name or "hash" in name for name in constraints)
