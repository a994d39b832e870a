"""AUD-08: beat's heartbeat signs the chain head once per AUDIT_CHAIN_CHECKPOINT_SECONDS even when
nothing happens, and ships each checkpoint to AUDIT_CHECKPOINT_FILE, so an auditor can tell
"nothing happened" from "the newest events were removed"."""

from __future__ import annotations

import datetime as dt

import pytest
import time_machine
from django.conf import settings as django_settings

from audit import log as audit
from audit.models import AuditCheckpoint
from tests import factories
from tests.governance.support import head_seq

INTERVAL = 600
INTERVALS = 3


@pytest.mark.django_db(transaction=True)  # real commits: the file is written on commit
def test_idle_chain_gets_exactly_one_signed_checkpoint_per_interval(settings, tmp_path, figures):
    settings.AUDIT_CHAIN_CHECKPOINT_SECONDS = INTERVAL
    settings.AUDIT_CHECKPOINT_FILE = tmp_path / "shipped" / "checkpoints.jsonl"
    beat = django_settings.CELERY_BEAT_SCHEDULE["audit-checkpoint"]
    assert beat["task"] == "audit.tasks.write_checkpoint_if_due"
    tick = float(beat["schedule"])
    assert tick <= INTERVAL, "beat must look more often than the interval"

    factories.make_workflow("refund-agent")
    head = head_seq()
    start = dt.datetime(2031, 3, 1, 12, 0, tzinfo=dt.UTC)
    with time_machine.travel(start, tick=False) as traveller:
        assert audit.write_checkpoint_if_due() is not None  # no checkpoint yet: one now
        assert audit.write_checkpoint_if_due() is None  # a second beat in the same instant: none
        elapsed = 0.0
        while elapsed < INTERVALS * INTERVAL:
            traveller.shift(tick)
            elapsed += tick
            audit.write_checkpoint_if_due()

    checkpoints = list(AuditCheckpoint.objects.order_by("created_at"))
    per_interval = {}
    for cp in checkpoints:
        bucket = int((cp.created_at - start).total_seconds() // INTERVAL)
        per_interval[bucket] = per_interval.get(bucket, 0) + 1
    shipped = settings.AUDIT_CHECKPOINT_FILE.read_text().splitlines()
    figures(f"AUD-08 idle for {INTERVALS} intervals of {INTERVAL}s with beat every {tick:.0f}s: "
            f"{len(checkpoints)} checkpoints, per interval {per_interval}, shipped lines={len(shipped)}")

    assert per_interval == {n: 1 for n in range(INTERVALS + 1)}
    assert [cp.created_at - start for cp in checkpoints] == [
        dt.timedelta(seconds=n * INTERVAL) for n in range(INTERVALS + 1)]
    assert all(cp.head_seq == head for cp in checkpoints), "nothing happened, so every checkpoint signs the same head"
    assert head_seq() == head, "the heartbeat itself writes no audit events"
    assert shipped == [audit.checkpoint_line(cp) for cp in checkpoints]
    report = audit.verify_database()
    assert report.ok and report.checkpoints == len(checkpoints), report.summary()
