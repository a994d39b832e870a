"""AUD-07: a session killed between a transition's UPDATE and its COMMIT leaves neither the change
nor its audit event; the retry makes exactly one of each."""

from __future__ import annotations

import pytest
from django.db import OperationalError

from audit import log as audit
from audit.models import AuditEvent
from governance import services
from governance.models import Workflow
from tests.reliability.threads import in_thread
from tests.reliability.waiting import wait_until

pytestmark = [pytest.mark.reliability, pytest.mark.timeout(180)]

ROUNDS = 50


def _waiting_on_lock(pg, pid: int) -> bool:
    with pg.admin(pg.dbname) as conn:
        row = conn.execute("SELECT wait_event_type FROM pg_stat_activity WHERE pid = %s", [pid]).fetchone()
    return bool(row and row[0] == "Lock")


def test_aud07_backend_killed_before_commit_persists_neither_change_nor_event(private_pg, figures, workflow,
                                                                              containment_owner):
    transitions = killed = 0
    errors: set[str] = set()
    # The audit append takes the chain's advisory lock after the service has updated the
    # workflow row; holding that lock here parks each transition exactly between UPDATE and COMMIT.
    with private_pg.admin(private_pg.dbname) as holder:
        for round_no in range(ROUNDS):
            pausing = round_no % 2 == 0
            change = services.pause_workflow if pausing else services.resume_workflow
            before = (Workflow.objects.get(pk=workflow.pk).paused, AuditEvent.objects.count())

            holder.execute("SELECT pg_advisory_lock(%s)", [audit.AUDIT_LOCK_KEY])
            thread, outcome = in_thread(
                lambda change=change, round_no=round_no: change(workflow.pk, actor=containment_owner,
                                                                reason=f"round {round_no}"))
            assert outcome.started.wait(10)
            wait_until(lambda outcome=outcome: _waiting_on_lock(private_pg, outcome.backend_pid), 10,
                       f"round {round_no}: the transition waits for the audit lock")
            assert private_pg.kill_backend(outcome.backend_pid)
            holder.execute("SELECT pg_advisory_unlock(%s)", [audit.AUDIT_LOCK_KEY])
            thread.join(10)
            assert not thread.is_alive()
            assert isinstance(outcome.error, OperationalError), outcome.error
            errors.add(type(outcome.error.__cause__).__name__)
            killed += 1
            assert (Workflow.objects.get(pk=workflow.pk).paused, AuditEvent.objects.count()) == before

            change(workflow.pk, actor=containment_owner, reason=f"retry of round {round_no}")  # the retry
            transitions += 1
            assert Workflow.objects.get(pk=workflow.pk).paused is pausing

    events = AuditEvent.objects.filter(action__in=["workflow.paused", "workflow.resumed"],
                                       workflow_slug=workflow.slug).count()
    report = audit.verify_database()
    figures.report("AUD-07", f"{killed} sessions killed between UPDATE and COMMIT ({', '.join(sorted(errors))}); "
                             f"committed transitions {transitions} - audit events {events} = {transitions - events}; "
                             f"chain {'OK' if report.ok else 'BROKEN'}",
                   killed=killed, transitions=transitions, events=events)
    assert transitions - events == 0
    assert report.ok, report
