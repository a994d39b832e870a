"""AUD-05: the standalone verifier (audit/verify_audit.py, run as its own program with the
system Python) names the first broken event of a tampered export, and catches a rewritten suffix
or a truncated tail only through the signed checkpoints.

The export holds 10,000 events read from the database (the first ones written by the services,
the rest appended in bulk in the same canonical form) with a signed checkpoint every 1,000 events
and one at the head, as written at export time.
"""

from __future__ import annotations

import json
import random
import re
from dataclasses import dataclass
from pathlib import Path

import pytest
from django.conf import settings
from django.db import transaction

from audit import log as audit
from audit.models import AuditEvent
from audit.verify_audit import (
    FORMAT_VERSION,
    Report,
    _parallel_prefix,
    _Walk,
    canonical_json,
    chain_hash,
    verify_export,
)
from core import clock
from governance import services
from tests import factories
from tests.governance.support import export_lines, run_verifier

# The tamper tests read files only; the mark makes pytest-django set up the database the
# module-scoped export fixture reads from.
pytestmark = pytest.mark.django_db

EVENTS = 10_000
CHECKPOINT_EVERY = 1_000
BROKEN_AT = re.compile(r"BROKEN at event #(\d+)")


@dataclass
class Export:
    lines: list[str]
    key_file: Path
    dir: Path
    head: int

    def event_index(self, seq: int) -> int:
        return next(i for i, line in enumerate(self.lines) if line.startswith(f'{{"type":"event","seq":{seq},'))

    def write(self, name: str, lines: list[str]) -> Path:
        path = self.dir / f"{name}.jsonl"
        path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
        return path


def _append_in_bulk(count: int) -> None:
    """Append `count` events after the head in record()'s canonical form, in one statement."""
    seq, prev = audit.head()
    rows = []
    for _ in range(count):
        seq += 1
        at = audit.format_time(clock.now())
        payload = {
            "v": FORMAT_VERSION, "seq": seq, "at": at,
            "actor": {"kind": "service", "id": "7", "label": "refund-bot"}, "action": "approvals.decided",
            "subject": {"type": "approvals.request", "id": str(seq)}, "workflow": "refund-agent",
            "data": {"verdict": "approve", "amount": "120.50", "note": "Rückerstattung ✓\u2028zweite Zeile"},
            "reason": "",
        }
        canonical = canonical_json(payload)
        event_hash = chain_hash(prev, canonical)
        rows.append(AuditEvent(
            seq=seq, occurred_at=clock.now(), actor_kind="service", actor_id="7", actor_label="refund-bot",
            action=payload["action"], subject_type="approvals.request", subject_id=str(seq),
            workflow_slug="refund-agent", data=payload["data"], canonical=canonical, prev_hash=prev, hash=event_hash,
        ))
        prev = event_hash
    AuditEvent.objects.bulk_create(rows, batch_size=2000)


@pytest.fixture(scope="module")
def export(django_db_setup, django_db_blocker, tmp_path_factory) -> Export:
    directory = tmp_path_factory.mktemp("aud05")
    key_file = directory / "checkpoint.key"
    key_file.write_text(settings.AUDIT_CHECKPOINT_KEY)
    with django_db_blocker.unblock(), transaction.atomic():
        admin = factories.make_user("ada-export", is_superuser=True)
        workflow = factories.make_workflow("refund-agent", actor=admin)
        for n in range(10):
            services.pause_workflow(workflow.pk, actor=admin, reason=f"incident {n}") if n % 2 == 0 else \
                services.resume_workflow(workflow.pk, actor=admin)
        while (seq := audit.head()[0]) < EVENTS:
            _append_in_bulk(min(EVENTS, (seq // CHECKPOINT_EVERY + 1) * CHECKPOINT_EVERY) - seq)
            audit.write_checkpoint("interval")
        audit.write_checkpoint("export")
        lines = export_lines()
        head = audit.head()[0]
        transaction.set_rollback(True)  # the file is the only thing this fixture leaves behind
    assert head == EVENTS
    return Export(lines, key_file, directory, head)


def _verify(export: Export, lines: list[str], name: str, *extra: str):
    result = run_verifier(export.write(name, lines), "--key-file", str(export.key_file), *extra)
    assert result.returncode in (0, 1), result.stderr
    return result


def _named(result) -> int | None:
    match = BROKEN_AT.search(result.stdout)
    return int(match.group(1)) if match else None


# --- the tamper classes -------------------------------------------------------------------------

def byte_flip(export: Export, k: int) -> list[str]:
    """Flip one bit (letter case) of one byte inside event k's hashed contents."""
    lines = list(export.lines)
    i = export.event_index(k)
    line = lines[i]
    start = line.index('"event":') + len('"event":')
    letters = [p for p in range(start, len(line)) if line[p].isascii() and line[p].isalpha()]
    p = random.Random(k).choice(letters)
    lines[i] = line[:p] + chr(ord(line[p]) ^ 0x20) + line[p + 1:]
    return lines


def delete(export: Export, k: int) -> list[str]:
    lines = list(export.lines)
    del lines[export.event_index(k)]
    return lines


def swap(export: Export, k: int) -> list[str]:
    lines = list(export.lines)
    i, j = export.event_index(k), export.event_index(k + 1)
    lines[i], lines[j] = lines[j], lines[i]
    return lines


def forged_insert(export: Export, k: int) -> list[str]:
    """A made-up event claiming seq k, correctly linked to event k-1 and correctly hashed, placed
    before the real event k: the best a forger without the checkpoint key can do."""
    lines = list(export.lines)
    i = export.event_index(k)
    prev = json.loads(lines[i])["prev_hash"]
    payload = dict(json.loads(lines[i])["event"], action="workflow.resumed", reason="nothing to see here")
    canonical = canonical_json(payload)
    lines.insert(i, audit.export_line((k, prev, chain_hash(prev, canonical), canonical)))
    return lines


def suffix_rewrite(export: Export, k: int) -> list[str]:
    """Change event k and recompute every later link: internally consistent, as an owner could."""
    lines = list(export.lines)
    prev = None
    for i, line in enumerate(lines):
        obj = json.loads(line)
        if obj["type"] != "event" or obj["seq"] < k:
            continue
        event = obj["event"]
        if obj["seq"] == k:
            event["reason"] = "approved by the on-call lead"
        canonical = canonical_json(event)
        prev = obj["prev_hash"] if prev is None else prev
        new_hash = chain_hash(prev, canonical)
        lines[i] = audit.export_line((obj["seq"], prev, new_hash, canonical))
        prev = new_hash
    return lines


def splice(export: Export, k: int) -> list[str]:
    """Events k… relinked as if event k-1 had never been written: each correctly hashed and linked
    to the one before it, except event k, which links to event k-2."""
    lines = list(export.lines)
    prev = None
    for i, line in enumerate(lines):
        obj = json.loads(line)
        if obj["type"] != "event" or obj["seq"] < k - 2:
            continue
        if obj["seq"] == k - 2:
            prev = obj["hash"]
        elif obj["seq"] >= k:
            canonical = canonical_json(obj["event"])
            lines[i] = audit.export_line((obj["seq"], prev, chain_hash(prev, canonical), canonical))
            prev = chain_hash(prev, canonical)
    return lines


def tail_truncation(export: Export, k: int) -> list[str]:
    """Remove events k…head (the newest ones)."""
    return [line for line in export.lines
            if not (line.startswith('{"type":"event"') and json.loads(line)["seq"] >= k)]


def without_checkpoints(lines: list[str]) -> list[str]:
    return [line for line in lines if not line.startswith('{"at"')]


# --- the tests ----------------------------------------------------------------------------------

def test_the_untampered_export_verifies_with_every_checkpoint(export, figures):
    result = _verify(export, export.lines, "intact")
    checkpoints = sum(line.startswith('{"at"') for line in export.lines)
    figures(f"AUD-05 export: {export.head} events, {checkpoints} signed checkpoints; verifier: "
            f"{result.stdout.splitlines()[0]}")
    assert result.returncode == 0, result.stdout
    assert f"OK: {EVENTS} events" in result.stdout
    assert f"{checkpoints} checkpoint(s) verified" in result.stdout


@pytest.mark.parametrize("tamper", [byte_flip, delete, swap, forged_insert], ids=lambda f: f.__name__)
def test_the_verifier_names_the_first_broken_event(export, tamper, figures):
    trials = (1, 4321, EVENTS - 7)
    named = {}
    for k in trials:
        result = _verify(export, tamper(export, k), f"{tamper.__name__}-{k}")
        named[k] = _named(result) if result.returncode == 1 else None
    detected = sum(named[k] == k for k in trials)
    figures(f"AUD-05 {tamper.__name__}: detected {detected}/{len(trials)} ({detected / len(trials):.0%}), "
            f"named seq for k={trials}: {[named[k] for k in trials]}")
    assert named == {k: k for k in trials}


@pytest.mark.parametrize("tamper", [suffix_rewrite, tail_truncation], ids=lambda f: f.__name__)
def test_a_rewritten_suffix_or_removed_tail_is_caught_only_by_a_signed_checkpoint(export, tamper, figures):
    trials = (EVENTS - 4, 4321) if tamper is tail_truncation else (4321, EVENTS - 2)
    shipped_file = export.write("checkpoints", [line for line in export.lines if line.startswith('{"at"')])
    detected = unnoticed_without = 0
    for trial, k in enumerate(trials):
        tampered = tamper(export, k)
        with_checkpoints = _verify(export, tampered, f"{tamper.__name__}-{k}")
        bare = _verify(export, without_checkpoints(tampered), f"{tamper.__name__}-{k}-bare")
        # Without checkpoints the chain is internally consistent: nothing to see.
        assert bare.returncode == 0, bare.stdout
        assert "no signed checkpoints given" in bare.stdout
        unnoticed_without += bare.returncode == 0
        # With them the report says how it was caught; also when the export lost its checkpoint
        # lines and they come from the file shipped outside the database.
        results = [with_checkpoints]
        if trial == 0:
            results.append(_verify(export, without_checkpoints(tampered), f"{tamper.__name__}-{k}-shipped",
                                   "--checkpoints", str(shipped_file)))
        for result in results:
            assert result.returncode == 1, result.stdout
            assert "detected by checkpoint" in result.stdout
        named = _named(with_checkpoints)
        if tamper is tail_truncation:
            assert named == k and f"events #{k}…#" in with_checkpoints.stdout
        else:
            # The rewrite starts between the newest matching checkpoint and the first differing one.
            first, last = map(int, re.search(r"from an event in #(\d+)…#(\d+) on", with_checkpoints.stdout).groups())
            assert first <= k <= last == named
        detected += 1
    figures(f"AUD-05 {tamper.__name__}: detected with checkpoints {detected}/{len(trials)} "
            f"({detected / len(trials):.0%}), without checkpoints {len(trials) - unnoticed_without}/{len(trials)}")


def test_a_forged_checkpoint_is_reported(export):
    lines = list(export.lines)
    i = max(i for i, line in enumerate(lines) if line.startswith('{"at"'))
    cp = json.loads(lines[i])
    cp["signature"] = "0" * 64
    lines[i] = json.dumps(cp, sort_keys=True)
    result = _verify(export, lines, "forged-checkpoint")
    assert result.returncode == 1 and "invalid signature" in result.stdout


def test_a_file_that_is_not_an_export_is_unusable_input(export):
    result = run_verifier(export.write("garbage", ["this is not json"]), "--key-file", str(export.key_file))
    assert result.returncode == 2 and "not a Ringfence export line" in result.stderr


def test_an_export_rewritten_by_another_json_tool_or_reordered_checkpoints_verifies_the_same(export):
    """The verifier reads the exporter's exact layout fastest, but the verdict does not depend on
    it: the same export re-serialised by another JSON tool (spaces, other key order, escaped
    non-ASCII) or with every checkpoint moved to the end gives the same answers."""
    checkpoints = sum(line.startswith('{"at"') for line in export.lines)
    reserialised = [json.dumps(json.loads(line), ensure_ascii=True) for line in export.lines]
    assert reserialised[5] != export.lines[5]
    at_the_end = ([line for line in export.lines if not line.startswith('{"at"')]
                  + [line for line in export.lines if line.startswith('{"at"')])
    for name, lines in (("reserialised", reserialised), ("checkpoints-at-end", at_the_end)):
        result = _verify(export, lines, name)
        assert result.returncode == 0, (name, result.stdout)
        assert f"OK: {EVENTS} events" in result.stdout and f"{checkpoints} checkpoint(s) verified" in result.stdout

    k = 4321
    flipped = [json.dumps(json.loads(line), ensure_ascii=True) for line in byte_flip(export, k)]
    assert _named(_verify(export, flipped, "reserialised-flipped")) == k


def _stretch_starts(path: Path, workers: int) -> list[int]:
    """The seq of the first event of each stretch after the first, cut as verify_export cuts them."""
    size, starts = path.stat().st_size, []
    with open(path, "rb") as fh:
        for i in range(1, workers):
            fh.seek(size * i // workers)
            fh.readline()
            starts.append(json.loads(fh.readline())["seq"])
    return starts


def test_processes_checking_stretches_side_by_side_reach_the_verdict_of_one_walk(export, figures):
    """Large exports are checked by several processes, a stretch each, joined end to start. The
    verdict and the event it names are those of one walk from the first line, wherever the damage
    lies: in the first stretch, the last, or on either side of where two stretches meet."""
    key, workers = settings.AUDIT_CHECKPOINT_KEY, 3
    intact = export.write("intact-stretches", export.lines)

    def both(path: Path) -> tuple[str, str]:
        return (verify_export(str(path), key, workers=workers, min_stretch=1).summary(),
                verify_export(str(path), key).summary())

    # The intact file is settled by the processes up to its last stretch's end, checkpoints and all.
    found: list = []
    walk = _Walk(Report(), set(), True)
    offset, lines = _parallel_prefix(str(intact), walk, found, workers, 1)
    assert (offset, lines, walk.report.events) == (intact.stat().st_size, len(export.lines), EVENTS)
    assert len(found) == sum(line.startswith('{"at"') for line in export.lines)
    in_processes, alone = both(intact)
    assert in_processes == alone and in_processes.startswith(f"OK: {EVENTS} events")

    meet = _stretch_starts(intact, workers)
    trials = {(tamper, k) for tamper in (byte_flip, delete, swap, forged_insert)
              for k in (1, 4321, EVENTS - 7, *(s - 1 for s in meet), *meet)}
    trials |= {(suffix_rewrite, meet[0]), (tail_truncation, meet[-1]), *((splice, k) for k in meet)}
    agree = 0
    for tamper, k in sorted(trials, key=lambda t: (t[0].__name__, t[1])):
        in_processes, alone = both(export.write(f"stretches-{tamper.__name__}-{k}", tamper(export, k)))
        assert in_processes == alone, (tamper.__name__, k)
        assert in_processes.startswith("BROKEN"), (tamper.__name__, k)
        agree += 1
    figures(f"AUD-05 in {workers} processes: {agree}/{len(trials)} tampered exports get one walk's verdict "
            f"(stretches meet at {meet})")
