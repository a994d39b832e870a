"""AUD-06: a transaction that fails after audit.record() leaves no event and no gap: seq is the
head + 1 under the lock, not a sequence (sequences do not roll back)."""

from __future__ import annotations

import pytest
from django.contrib.auth.models import User
from django.db import transaction

from audit import log as audit
from governance import services
from governance.models import Workflow
from tests import factories
from tests.governance.support import chain_stats, events_since, head_seq, race

THREADS = 4
PER_THREAD = 50  # half commit, half fail: 100 + 100 in all


class AfterTheAuditEvent(Exception):
    """Raised inside the transaction after the service has written its audit event."""


@pytest.mark.django_db(transaction=True)
def test_failed_transitions_interleaved_with_committed_ones_leave_no_gap(figures):
    actor = factories.make_user("incident-commander", is_superuser=True)
    ids = [factories.make_workflow(f"wf-{i}", actor=actor).pk for i in range(THREADS)]
    start = head_seq()

    def worker(index: int, go) -> tuple[int, int]:
        me = User.objects.get(pk=actor.pk)
        paused = committed = failed = 0
        go()
        for n in range(PER_THREAD):
            change = services.resume_workflow if paused else services.pause_workflow
            kwargs = {"reason": f"t{index} n{n}"}
            if n % 2 == 0:
                change(ids[index], actor=me, **kwargs)
                paused, committed = not paused, committed + 1
                continue
            try:
                with transaction.atomic():
                    change(ids[index], actor=me, **kwargs)
                    raise AfterTheAuditEvent
            except AfterTheAuditEvent:
                failed += 1
        return committed, failed

    results = race(THREADS, worker)
    committed = sum(c for c, _ in results)
    failed = sum(f for _, f in results)
    events = events_since(start)
    stats = chain_stats()
    figures(f"AUD-06 committed={committed} failed={failed} new events={len(events)} gaps={stats.gaps} "
            f"forks={stats.forks}")

    assert (committed, failed) == (100, 100)
    assert len(events) == committed
    assert [e.seq for e in events] == list(range(start + 1, start + 1 + committed))
    assert stats.linear, stats
    assert audit.verify_database().ok
    # Each workflow saw 25 committed toggles, so it ends paused; the failed ones changed nothing.
    assert Workflow.objects.filter(pk__in=ids, paused=True).count() == THREADS
