"""Signal retention: samples older than SIGNAL_RETENTION_DAYS become per-minute rollups.

Once a day (beat, `rollouts.tasks.retain_signals`) the samples measured before the cutoff are
folded into `SignalRollup` rows (count, sum, minimum and maximum per plan, metric, ring, segment
and minute) and deleted, `BATCH` samples of one plan and metric per transaction: a backlog of
millions neither holds a lock for long nor grows one transaction. A batch's rollups and the
deletion of the same samples commit together, so a run stopped midway leaves every sample either
still raw or counted once in its minute, and the next run goes on from there. Late samples (never
counted by evaluation) are deleted without a rollup.

The cutoff never cuts into what evaluation reads: it lies at least the longest window any plan's
rules look back (criterion windows, ring soaks, trigger windows with their flapping history, no-data
limits) before now. Evidence and charts read the rollups where the samples are gone (`points`,
`value_at`). The audit trail is never touched; each batch that removed something records one
`rollout.signals_retained` event with that batch's counts, in the batch's transaction (a run killed
midway has recorded every batch it committed). SIGNAL_RETENTION_DAYS=0 keeps every sample.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from django.conf import settings
from django.db import connection, transaction
from django.db.models import Exists, Max, Min, OuterRef, Sum

from audit import log as audit
from core import clock
from rollouts.models import (
    MAX_FLAP_WINDOWS,
    ExpansionCriterion,
    Metric,
    Ring,
    RollbackTrigger,
    RolloutPlan,
    Signal,
    SignalRollup,
)

AUDIT_ACTIONS = ("rollout.signals_retained",)
ACTOR = "signal retention"
BATCH = 10_000
LOCK_KEY = 0x52494E53  # one run at a time across workers (next to the audit's "RING" keys)


@dataclass
class Retained:
    """What one run did."""

    cutoff: datetime | None
    deleted: int = 0  # samples deleted
    rolled_up: int = 0  # of which counted into rollups (the rest were late)
    rollups_created: int = 0
    rollups_added_to: int = 0
    batches: int = 0
    plans: set[int] = field(default_factory=set)
    finished: bool = True  # False: the time budget ran out with old samples left


def longest_lookback() -> timedelta:
    """The furthest back any plan's rules read samples from now (generously)."""
    criteria = ExpansionCriterion.objects.aggregate(window=Max("window"))["window"]
    soak = Ring.objects.aggregate(soak=Max("min_soak"))["soak"]
    triggers = RollbackTrigger.objects.aggregate(span=Max("sustained_for"), no_data=Max("no_data_after"))
    spans = [criteria, soak, triggers["no_data"]]
    if triggers["span"] is not None:
        spans.append(triggers["span"] * (MAX_FLAP_WINDOWS + 1))
    return max((span for span in spans if span is not None), default=timedelta(0))


def cutoff(now: datetime) -> datetime | None:
    """Samples measured before this are rolled up; None when SIGNAL_RETENTION_DAYS is 0."""
    if not settings.SIGNAL_RETENTION_DAYS:
        return None
    return now - max(timedelta(days=settings.SIGNAL_RETENTION_DAYS), longest_lookback())


@contextmanager
def _one_run() -> Iterator[bool]:
    """True when no other run holds the retention lock (PostgreSQL; SQLite has one writer anyway)."""
    if connection.vendor != "postgresql":
        yield True
        return
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_try_advisory_lock(%s)", [LOCK_KEY])
        mine = cursor.fetchone()[0]
    try:
        yield mine
    finally:
        if mine:
            with connection.cursor() as cursor:
                cursor.execute("SELECT pg_advisory_unlock(%s)", [LOCK_KEY])


def retain_signals(*, now: datetime | None = None, batch: int = BATCH, budget_seconds: float | None = None) -> Retained:
    """Roll up and delete the samples older than the cutoff, stopping between batches once
    `budget_seconds` are spent (`finished` False: call again).

    Audit: `rollout.signals_retained` (the batch's counts, cutoff, plan, metric), once per batch that
    deleted samples, inside that batch's transaction.
    """
    at = cutoff(now or clock.now())
    done = Retained(at)
    if at is None:
        return done
    stop = time.monotonic() + budget_seconds if budget_seconds is not None else None
    with _one_run() as mine:
        if not mine:
            return done
        for plan_id, metric_id in _old_series(at):
            while _retain_batch(plan_id, metric_id, at, batch, done) == batch:
                if stop is not None and time.monotonic() > stop:
                    done.finished = False
                    break
            if not done.finished:
                break
    return done


def _old_series(at: datetime) -> list[tuple[int, int]]:
    """(plan, metric) pairs with samples before `at`: one index probe per plan and metric."""
    pairs = []
    for plan_id in RolloutPlan.objects.order_by("pk").values_list("pk", flat=True):
        old = Signal.objects.filter(plan_id=plan_id, metric_id=OuterRef("pk"), observed_at__lt=at)
        pairs += [(plan_id, m) for m in Metric.objects.filter(Exists(old)).order_by("pk").values_list("pk", flat=True)]
    return pairs


@transaction.atomic
def _retain_batch(plan_id: int, metric_id: int, at: datetime, batch: int, done: Retained) -> int:
    """Fold the oldest `batch` samples of one plan and metric before `at` into their minutes and
    delete them, and record the batch, in one transaction. Returns how many samples it took."""
    oldest = Signal.objects.filter(plan_id=plan_id, metric_id=metric_id, observed_at__lt=at).order_by(
        "observed_at", "segment")  # the order of the (plan, metric, time, segment) index
    rows = list(oldest.values_list("pk", "ring", "segment", "observed_at", "value", "late")[:batch])
    if not rows:
        return 0
    minutes: dict[tuple, list] = {}
    for _, ring, segment, observed_at, value, late in rows:
        if late:
            continue
        key = (observed_at.replace(second=0, microsecond=0), ring, segment)
        if (agg := minutes.get(key)) is None:
            minutes[key] = [1, value, value, value]
        else:
            agg[0] += 1
            agg[1] += value
            agg[2] = min(agg[2], value)
            agg[3] = max(agg[3], value)
    created, added = [], []
    if minutes:
        first, last = min(k[0] for k in minutes), max(k[0] for k in minutes)
        existing = {(r.minute, r.ring, r.segment): r for r in SignalRollup.objects.select_for_update().filter(
            plan_id=plan_id, metric_id=metric_id, minute__gte=first, minute__lte=last)}
        for key, (count, total, low, high) in minutes.items():
            if (rollup := existing.get(key)) is None:
                created.append(SignalRollup(plan_id=plan_id, metric_id=metric_id, minute=key[0], ring=key[1],
                                            segment=key[2], count=count, sum=total, min=low, max=high))
            else:
                rollup.count += count
                rollup.sum += total
                rollup.min, rollup.max = min(rollup.min, low), max(rollup.max, high)
                added.append(rollup)
        SignalRollup.objects.bulk_create(created)
        SignalRollup.objects.bulk_update(added, ["count", "sum", "min", "max"])
    deleted, _ = Signal.objects.filter(pk__in=[row[0] for row in rows]).delete()
    if deleted != len(rows):  # another writer took some of them: leave the batch to the next run
        transaction.set_rollback(True)
        return 0
    rolled_up = sum(agg[0] for agg in minutes.values())
    audit.record(ACTOR, "rollout.signals_retained", ("rollouts.signalrollup", audit.format_time(at)), data={
        "retention_days": settings.SIGNAL_RETENTION_DAYS, "cutoff": at, "plan": plan_id,
        "metric": Metric.objects.values_list("slug", flat=True).get(pk=metric_id), "samples_deleted": deleted,
        "samples_rolled_up": rolled_up, "late_samples_deleted": deleted - rolled_up,
        "rollups_created": len(created), "rollups_added_to": len(added)})
    done.deleted += deleted
    done.rolled_up += rolled_up
    done.rollups_created += len(created)
    done.rollups_added_to += len(added)
    done.batches += 1
    done.plans.add(plan_id)
    return len(rows)


# --- reading what retention left -----------------------------------------------------------------

def rolled_up_points(plan_id: int, metric_id: int, bucket) -> dict[datetime, tuple[float, float, float, int]]:
    """The rollups of a plan's metric per `bucket` (TruncMinute/TruncHour/TruncDay of "minute"):
    {bucket: (sum, min, max, count)} over every ring and segment."""
    rows = (SignalRollup.objects.filter(plan_id=plan_id, metric_id=metric_id)
            .annotate(at=bucket("minute")).values("at")
            .annotate(total=Sum("sum"), low=Min("min"), high=Max("max"), n=Sum("count")).order_by("at"))
    return {r["at"]: (r["total"], r["low"], r["high"], r["n"]) for r in rows}


def value_at(plan_id: int, metric_id: int, at: datetime) -> tuple[datetime, float] | None:
    """For a moment whose samples are gone: the mean of the last rolled-up minute at or before `at`
    (over every ring and segment) and that minute."""
    minute = (SignalRollup.objects.filter(plan_id=plan_id, metric_id=metric_id, minute__lte=at)
              .order_by("-minute").values_list("minute", flat=True).first())
    if minute is None:
        return None
    row = SignalRollup.objects.filter(plan_id=plan_id, metric_id=metric_id, minute=minute).aggregate(
        total=Sum("sum"), n=Sum("count"))
    return minute, row["total"] / row["n"]


def rolled_up_span(plan_id: int, metric_id: int) -> tuple[datetime, datetime] | None:
    """The first and last rolled-up minute of a plan's metric, or None when nothing was rolled up."""
    row = SignalRollup.objects.filter(plan_id=plan_id, metric_id=metric_id).aggregate(
        first=Min("minute"), last=Max("minute"))
    return (row["first"], row["last"]) if row["first"] is not None else None


Point = tuple[datetime, float, float, float, int]  # a chart's (bucket, mean, low, high, n)


def merge_points(raw: list[Point], rolled: dict[datetime, tuple[float, float, float, int]]) -> list[Point]:
    """Chart points (bucket, mean, low, high, n) of the samples and of the rollups, one per bucket."""
    merged = {at: (total, low, high, n) for at, (total, low, high, n) in rolled.items()}
    for at, mean, low, high, n in raw:
        if at in merged:
            total, low0, high0, n0 = merged[at]
            merged[at] = (total + mean * n, min(low, low0), max(high, high0), n + n0)
        else:
            merged[at] = (mean * n, low, high, n)
    return [(at, total / n, low, high, n) for at, (total, low, high, n) in sorted(merged.items())]
