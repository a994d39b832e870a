"""AUD-01: 16 writers × 200 real service transitions, released together, leave one linear chain."""

from __future__ import annotations

import time

import pytest
from django.contrib.auth.models import User

from audit import log as audit
from governance import services
from governance.models import Workflow
from tests import factories
from tests.governance.support import chain_stats, events_since, head_seq, percentile, race

WRITERS = 16
TRANSITIONS = 200
BASELINE = 100  # transitions of the single writer the throughput is compared with


def _kill_switch_drill(workflow_ids: list[int], owner_id: int, transitions: int):
    """Each thread pauses and resumes its own workflow: real service transactions whose last
    statement is audit.record(), so threads contend only for the chain."""

    def writer(index: int, go) -> tuple[float, float, list[float]]:
        actor = User.objects.get(pk=owner_id)
        workflow_id = workflow_ids[index]
        latencies = []
        go()
        started = time.perf_counter()
        for n in range(transitions):
            t0 = time.perf_counter()
            if n % 2 == 0:
                services.pause_workflow(workflow_id, actor=actor, reason=f"drill {index}/{n}")
            else:
                services.resume_workflow(workflow_id, actor=actor)
            latencies.append(time.perf_counter() - t0)
        return started, time.perf_counter(), latencies

    return writer


def _run(threads: int, workflow_ids: list[int], owner_id: int, transitions: int) -> tuple[float, float]:
    results = race(threads, _kill_switch_drill(workflow_ids, owner_id, transitions))
    elapsed = max(end for _, end, _ in results) - min(start for start, _, _ in results)
    latencies = [lat for _, _, lats in results for lat in lats]
    return threads * transitions / elapsed, percentile(latencies, 99) * 1000


@pytest.mark.django_db(transaction=True)
def test_sixteen_writers_append_a_contiguous_unforked_chain_that_verifies(figures):
    admin = factories.make_admin()
    # The incident commander is a superuser so that each transition is the service's own work
    # (lock the workflow, change it, audit) without permission look-ups diluting the contention.
    owner = factories.make_user("incident-commander", is_superuser=True)
    workflows = [factories.make_workflow(f"drill-{i:02d}", actor=admin) for i in range(WRITERS)]
    ids = [w.pk for w in workflows]

    baseline_from = head_seq()
    one_writer_rate, one_writer_p99 = _run(1, ids, owner.pk, BASELINE)
    assert len(events_since(baseline_from)) == BASELINE

    run_from = head_seq()
    rate, p99 = _run(WRITERS, ids, owner.pk, TRANSITIONS)

    events = events_since(run_from)
    stats = chain_stats()
    report = audit.verify_database()
    figures(f"AUD-01 events={len(events)} (whole chain {stats.events}) gaps={stats.gaps} forks={stats.forks} "
            f"broken_links={stats.broken_links} appends/s={rate:.0f} p99={p99:.1f} ms "
            f"(1 writer: {one_writer_rate:.0f}/s p99={one_writer_p99:.1f} ms) "
            f"ratio 16:1 writers={rate / one_writer_rate:.2f} verifier={'OK' if report.ok else 'BROKEN'}")

    assert len(events) == WRITERS * TRANSITIONS
    assert [e.seq for e in events] == list(range(run_from + 1, run_from + 1 + WRITERS * TRANSITIONS))
    assert {e.action for e in events} == {"workflow.paused", "workflow.resumed"}
    assert stats.linear, stats
    assert report.ok, report.summary()
    assert report.events == stats.events == stats.last_seq
    # Every workflow went through the same number of transitions and ended running.
    assert not Workflow.objects.filter(pk__in=ids, paused=True).exists()
    for workflow in workflows:
        assert sum(e.workflow_slug == workflow.slug for e in events) == TRANSITIONS
