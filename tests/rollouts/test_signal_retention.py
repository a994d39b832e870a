"""Signals older than SIGNAL_RETENTION_DAYS become per-minute rollups; the audit trail is never touched."""

from __future__ import annotations

import datetime as dt
from types import SimpleNamespace

import pytest
import time_machine
from django.db.models.functions import TruncMinute

from audit import log as audit
from audit.models import AuditEvent
from rollouts import dashboards, evidence, proposals, retention, tasks
from rollouts.models import ExpansionCriterion, Signal, SignalRollup
from tests.rollouts.conftest import metric

pytestmark = pytest.mark.django_db

NOW = dt.datetime(2026, 3, 2, 10, 0, tzinfo=dt.UTC)
CUTOFF = NOW - dt.timedelta(days=30)
OLD = CUTOFF - dt.timedelta(days=2)  # 2026-01-29 10:00
PARTNERS = "customer_group:partners"


@pytest.fixture(autouse=True)
def _now(settings):
    settings.SIGNAL_RETENTION_DAYS = 30
    with time_machine.travel(NOW, tick=False):
        yield


def sample(plan, slug: str, at: dt.datetime, value: float, *, ring: int | None = 0, segment: str = "",
           late: bool = False) -> None:
    Signal.objects.create(plan=plan, metric=metric(slug), ring=ring, segment=segment, observed_at=at, value=value,
                          received_at=at + (dt.timedelta(hours=2) if late else dt.timedelta(seconds=1)), late=late)


@pytest.fixture
def history(live_plan):
    """Old minutes of two metrics (one split across batches, one late sample), a sample exactly at
    the cutoff, and recent ones."""
    s = dt.timedelta(seconds=1)
    sample(live_plan, "quality_score", OLD + 5 * s, 0.5)
    sample(live_plan, "quality_score", OLD + 20 * s, 1.25)
    sample(live_plan, "quality_score", OLD + 40 * s, 0.75)
    sample(live_plan, "quality_score", OLD + 45 * s, 9.0, late=True)  # never counted: dropped, not rolled up
    sample(live_plan, "quality_score", OLD + 30 * s, 2.0, ring=1, segment=PARTNERS)
    sample(live_plan, "quality_score", OLD + 60 * s, 0.25)  # the next minute
    sample(live_plan, "quality_score", OLD + 61 * s, 0.5, ring=None)  # no ring: its own rollup
    sample(live_plan, "latency_p95_ms", OLD + 10 * s, 640.0)
    sample(live_plan, "latency_p95_ms", OLD + 50 * s, 900.0)
    sample(live_plan, "quality_score", CUTOFF, 0.9)  # not older than the retention: kept
    sample(live_plan, "quality_score", NOW - dt.timedelta(hours=1), 0.8)
    sample(live_plan, "latency_p95_ms", NOW - dt.timedelta(minutes=1), 700.0)
    return live_plan


def rollups() -> set[tuple]:
    return set(SignalRollup.objects.values_list("metric__slug", "minute", "ring", "segment", "count", "sum", "min",
                                                "max"))


def chain() -> list[tuple[int, str]]:
    return list(AuditEvent.objects.order_by("seq").values_list("seq", "hash"))


EXPECTED = {
    ("quality_score", OLD, 0, "", 3, 2.5, 0.5, 1.25),
    ("quality_score", OLD, 1, PARTNERS, 1, 2.0, 2.0, 2.0),
    ("quality_score", OLD + dt.timedelta(minutes=1), 0, "", 1, 0.25, 0.25, 0.25),
    ("quality_score", OLD + dt.timedelta(minutes=1), None, "", 1, 0.5, 0.5, 0.5),
    ("latency_p95_ms", OLD, 0, "", 2, 1540.0, 640.0, 900.0),
}


def test_old_samples_become_exact_minute_rollups_and_newer_ones_stay(history):
    before = chain()
    assert audit.verify_database().ok

    done = retention.retain_signals(batch=2)  # small batches: a minute is split across three of them

    assert rollups() == EXPECTED
    assert done.deleted == 9 and done.rolled_up == 8 and done.batches == 5 and done.plans == {history.pk}
    assert sorted(Signal.objects.values_list("metric__slug", "observed_at")) == sorted([
        ("quality_score", CUTOFF), ("quality_score", NOW - dt.timedelta(hours=1)),
        ("latency_p95_ms", NOW - dt.timedelta(minutes=1))])
    # The audit trail: every event before the run untouched, one event per batch, the log verifies.
    after = chain()
    assert after[:len(before)] == before and len(after) == len(before) + 5
    events = list(AuditEvent.objects.filter(seq__gt=before[-1][0]).order_by("seq"))
    assert {(e.action, e.actor_label) for e in events} == {("rollout.signals_retained", "signal retention")}
    assert {(e.data["retention_days"], e.data["cutoff"], e.data["plan"]) for e in events} == {
        (30, audit.format_time(CUTOFF), history.pk)}
    counts = ("samples_deleted", "samples_rolled_up", "late_samples_deleted", "rollups_created", "rollups_added_to")
    per_batch = [(e.data["metric"], *(e.data[name] for name in counts)) for e in events]
    assert [b for b in per_batch if b[0] == "quality_score"] == [
        ("quality_score", 2, 2, 0, 1, 0),  # 10:00:05, 10:00:20 → the ring 0 minute
        ("quality_score", 2, 2, 0, 1, 1),  # 10:00:30 (partners), 10:00:40 → added to that minute
        ("quality_score", 2, 1, 1, 1, 0),  # the late 10:00:45 (dropped), 10:01:00
        ("quality_score", 1, 1, 0, 1, 0)]  # 10:01:01 without a ring
    assert [b for b in per_batch if b[0] == "latency_p95_ms"] == [("latency_p95_ms", 2, 2, 0, 1, 0)]
    assert audit.verify_database().ok


def test_a_second_run_changes_nothing(history):
    retention.retain_signals()
    kept, events = sorted(Signal.objects.values_list("pk", flat=True)), chain()

    again = tasks.retain_signals()  # what beat runs daily

    assert again == {"deleted": 0, "rolled_up": 0, "batches": 0}
    assert rollups() == EXPECTED and sorted(Signal.objects.values_list("pk", flat=True)) == kept
    assert chain() == events


def test_a_run_stopped_between_batches_is_finished_by_the_next_with_the_same_rollups(history):
    first = retention.retain_signals(batch=2, budget_seconds=0)  # stops after its first full batch

    assert not first.finished and first.deleted == 2 and Signal.objects.count() == 10
    [event] = AuditEvent.objects.filter(action="rollout.signals_retained")  # it says what it removed
    assert event.data["samples_deleted"] == 2
    rest = retention.retain_signals(batch=2)
    assert rest.finished and first.deleted + rest.deleted == 9
    assert AuditEvent.objects.filter(action="rollout.signals_retained").count() == 5
    assert rollups() == EXPECTED and audit.verify_database().ok


def test_a_run_killed_midway_has_recorded_every_batch_it_deleted(history, monkeypatch):
    real, calls = retention._retain_batch, []

    def dies_at_the_second_batch(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise SystemExit("the worker was killed")
        return real(*args, **kwargs)

    monkeypatch.setattr(retention, "_retain_batch", dies_at_the_second_batch)
    with pytest.raises(SystemExit):
        retention.retain_signals(batch=2)

    assert Signal.objects.count() == 10  # the first batch is gone...
    [event] = AuditEvent.objects.filter(action="rollout.signals_retained")  # ...and recorded
    assert (event.data["samples_deleted"], event.data["samples_rolled_up"]) == (2, 2)
    assert audit.verify_database().ok


def test_zero_days_keeps_every_sample(history, settings):
    settings.SIGNAL_RETENTION_DAYS = 0
    events = chain()

    done = retention.retain_signals()

    assert done.cutoff is None and done.deleted == 0
    assert Signal.objects.count() == 12 and not SignalRollup.objects.exists() and chain() == events


def test_the_cutoff_never_cuts_into_a_window_a_rule_reads(history):
    ExpansionCriterion.objects.filter(plan=history).update(window=dt.timedelta(days=40))

    done = retention.retain_signals()

    assert done.cutoff == NOW - dt.timedelta(days=40) and done.deleted == 0
    assert Signal.objects.count() == 12


def test_charts_and_evidence_read_the_rollups_where_the_samples_are_gone(history):
    retention.retain_signals()

    points = dashboards.signal_points(history, metric("quality_score"))

    # The history spans 32 days: hourly buckets, the rolled-up minutes of each hour added together.
    by_hour = {at: (mean, low, high, n) for at, mean, low, high, n in points}
    assert by_hour[OLD] == (5.25 / 6, 0.25, 2.0, 6)
    assert by_hour[CUTOFF] == (0.9, 0.9, 0.9, 1)
    assert sum(n for *_, n in points) == 8
    assert retention.rolled_up_points(history.pk, metric("latency_p95_ms").pk, TruncMinute) == {
        OLD: (1540.0, 640.0, 900.0, 2)}
    # A decision taken when only rolled-up minutes remain shows the mean of the last minute before it.
    action = proposals.propose_action(history.pk, kind="expand", handling="execute", tier=1, origin="criteria",
                                      evidence={}).action
    closed = SimpleNamespace(subject_id=str(action.pk), closed_at=OLD + dt.timedelta(minutes=5), state="approved")
    rows = evidence.signals_at_decisions(closed, [])
    assert [(r["metric"], r["value"], r["at"], r.get("rolled_up")) for r in rows] == [
        ("latency_p95_ms", 770.0, OLD, True), ("quality_score", 0.375, OLD + dt.timedelta(minutes=1), True)]
