#!/usr/bin/env python3
"""Verify a Ringfence audit export offline. Standard library only: copy this one file anywhere.

    python3 verify_audit.py export.jsonl [--key-file KEYFILE | --key KEY] [--checkpoints FILE]

An export is JSON Lines: one {"type": "event", "seq", "prev_hash", "hash", "event": {...}} per
event and {"type": "checkpoint", "seq", "hash", "at", "signature"} lines for the signed chain
heads. The verifier checks every link (hash = SHA-256(prev_hash bytes ‖ canonical JSON of the
event)), that seq runs 1, 2, 3 … with no gap, and, given the checkpoint key, that every
signed checkpoint is on the chain and that the chain reaches the newest one; only the
checkpoints reveal removed tail events or a rewritten suffix. Exit status 0 when intact, 1
when broken (the first broken event is named), 2 on unusable input.
"""

from __future__ import annotations

import argparse
import binascii
import hashlib
import hmac
import json
import os
import re
import sys
from dataclasses import dataclass, field
from typing import BinaryIO, Iterable, Iterator

FORMAT_VERSION = 1
GENESIS = "00" * 32


def canonical_json(payload: dict) -> str:
    """Sorted keys, no insignificant whitespace, UTF-8, no NaN or Infinity."""
    return json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def chain_hash(prev_hash: str, canonical: str) -> str:
    return hashlib.sha256(bytes.fromhex(prev_hash) + canonical.encode("utf-8")).hexdigest()


def checkpoint_message(seq: int, head_hash: str, at: str) -> bytes:
    return f"ringfence-checkpoint:v{FORMAT_VERSION}:{seq}:{head_hash}:{at}".encode()


def sign_checkpoint(key: str, seq: int, head_hash: str, at: str) -> str:
    return hmac.new(key.encode(), checkpoint_message(seq, head_hash, at), hashlib.sha256).hexdigest()


@dataclass
class Checkpoint:
    seq: int
    hash: str
    at: str
    signature: str


@dataclass
class Report:
    events: int = 0
    head_seq: int = 0
    head_hash: str = GENESIS
    checkpoints: int = 0
    first_broken_seq: int | None = None
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def fail(self, seq: int | None, message: str) -> None:
        if self.first_broken_seq is None and seq is not None:
            self.first_broken_seq = seq
        self.problems.append(message)

    def summary(self) -> str:
        lines = []
        if self.ok:
            lines.append(f"OK: {self.events} events, head #{self.head_seq} {self.head_hash[:16]}…, "
                         f"{self.checkpoints} checkpoint(s) verified.")
        else:
            where = f" at event #{self.first_broken_seq}" if self.first_broken_seq is not None else ""
            lines.append(f"BROKEN{where}: {self.problems[0]}")
            lines.extend(f"  also: {p}" for p in self.problems[1:5])
        lines.extend(f"note: {n}" for n in self.notes)
        return "\n".join(lines)


def verify(events: Iterable[tuple[int, str, str, str] | DamagedLine], checkpoints: Iterable[Checkpoint] = (),
           key: str | None = None, *, stop_at_first: bool = True) -> Report:
    """Check (seq, prev_hash, hash, canonical) tuples in seq order, then the checkpoints."""
    cps = list(checkpoints)
    walk = _Walk(Report(), {cp.seq for cp in cps}, stop_at_first)
    for item in events:
        if not walk.step(item):
            break
    return walk.finish(cps, key)


_INNER_SEQ = re.compile(r'"seq":(0|[1-9][0-9]*)[,}]')


def _inner_seq(canonical: str) -> int | None:
    """The seq inside an event's hashed contents: keys are sorted and every string is escaped, so
    the last unescaped `"seq":` is the top-level one (only "subject", "v" and "workflow" follow)."""
    match = _INNER_SEQ.match(canonical, max(canonical.rfind('"seq":'), 0))
    return int(match[1]) if match else None


class _Walk:
    """A walk along the chain: where it stands, and the checks of one event, each broken link named."""

    def __init__(self, report: Report, wanted: set[int], stop_at_first: bool) -> None:
        self.report, self.wanted, self.stop_at_first = report, wanted, stop_at_first
        self.expected_seq, self.prev = 1, GENESIS
        self.hashes: dict[int, str] = {}

    def step(self, item: tuple[int, str, str, str] | DamagedLine) -> bool:
        """Check one event; False when the walk stops here."""
        report = self.report
        if isinstance(item, DamagedLine):
            report.fail(self.expected_seq, f"line {item.number} of the export is damaged ({item.problem}): event "
                                           f"#{self.expected_seq} or a checkpoint there was altered.")
            return not self.stop_at_first
        seq, prev_hash, event_hash, canonical = item
        report.events += 1
        problem = None
        if seq != self.expected_seq:
            if seq > self.expected_seq:
                problem = (self.expected_seq, f"event #{self.expected_seq} is missing (next event found is #{seq}).")
            else:
                problem = (seq, f"event #{seq} appears out of order or twice (expected #{self.expected_seq}).")
        elif prev_hash != self.prev:
            problem = (seq, f"event #{seq} does not link to the event before it (prev_hash differs).")
        elif chain_hash(prev_hash, canonical) != event_hash:
            problem = (seq, f"event #{seq}'s contents do not match its hash (the event was altered).")
        elif (inner_seq := _inner_seq(canonical)) != seq:
            problem = (seq, f"event #{seq} carries seq {inner_seq!r} inside its hashed contents.")
        if problem:
            report.fail(*problem)
            if self.stop_at_first:
                return False
        if seq in self.wanted:
            self.hashes[seq] = event_hash
        self.prev, self.expected_seq = event_hash, seq + 1
        report.head_seq, report.head_hash = seq, event_hash
        return True

    def finish(self, cps: list[Checkpoint], key: str | None) -> Report:
        if self.report.ok or not self.stop_at_first:
            _check_checkpoints(self.report, cps, self.hashes, key)
        return self.report


def _check_checkpoints(report: Report, cps: list[Checkpoint], hashes: dict[int, str], key: str | None) -> None:
    if not cps:
        report.notes.append("no signed checkpoints given: removal of the newest events or a rewritten "
                            "suffix cannot be detected without them.")
        return
    if not key:
        report.notes.append("no checkpoint key given: checkpoint signatures were not checked.")
    hashes[0] = GENESIS
    last_good = 0  # the newest seq a valid checkpoint confirmed
    for cp in sorted(cps, key=lambda c: c.seq):
        if key and not hmac.compare_digest(sign_checkpoint(key, cp.seq, cp.hash, cp.at), cp.signature):
            report.fail(None, f"checkpoint for #{cp.seq} signed at {cp.at} has an invalid signature.")
            continue
        if cp.seq > report.head_seq:
            report.fail(report.head_seq + 1,
                        f"the chain ends at #{report.head_seq} but a signed checkpoint ({cp.at}) names #{cp.seq}: "
                        f"events #{report.head_seq + 1}…#{cp.seq} were removed (detected by checkpoint).")
            continue
        if hashes.get(cp.seq) != cp.hash:
            # The links are consistent, so the events were recomputed: the rewrite starts after the
            # newest checkpoint that still matches and at or before this one.
            report.fail(cp.seq, f"event #{cp.seq} differs from the signed checkpoint of {cp.at}: the chain was "
                                f"rewritten from an event in #{last_good + 1}…#{cp.seq} on (detected by checkpoint).")
            continue
        last_good = max(last_good, cp.seq)
        report.checkpoints += 1


def parse_line(number: int, line: str) -> tuple[int, str, str, str] | Checkpoint | None:
    if not line.strip():
        return None
    try:
        obj = json.loads(line)
        kind = obj.get("type")
        if kind == "checkpoint":
            return Checkpoint(int(obj["seq"]), str(obj["hash"]), str(obj["at"]), str(obj["signature"]))
        if kind == "event":
            return int(obj["seq"]), str(obj["prev_hash"]), str(obj["hash"]), canonical_json(obj["event"])
        raise ValueError(f"unknown line type {kind!r}")
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise UnusableInput(f"line {number}: not a Ringfence export line ({exc}).", problem=str(exc)) from None


class UnusableInput(Exception):
    def __init__(self, message: str, *, problem: str = "") -> None:
        super().__init__(message)
        self.problem = problem or message


@dataclass
class DamagedLine:
    """A line after the first readable one that is no longer a valid export line: tampering, not
    unusable input, so it is reported as a broken chain at that point."""

    number: int
    problem: str


def export_events(lines: Iterable[str]) -> Iterator[tuple[int, str, str, str] | DamagedLine]:
    """Events in file order (a reordered file is a broken chain), one line in memory at a time.

    An unreadable first line means the file is not an export (UnusableInput); an unreadable
    later line is yielded as a DamagedLine.
    """
    readable = False
    for number, line in enumerate(lines, 1):
        try:
            item = parse_line(number, line)
        except UnusableInput as exc:
            if not readable:
                raise
            yield DamagedLine(number, exc.problem)
            continue
        readable = readable or item is not None
        if isinstance(item, tuple):
            yield item


# An event line as the exporter writes it (audit.export_line): a fixed header, then the canonical
# bytes verbatim. Lines in exactly this layout are checked on their bytes, without parsing JSON;
# any other line, or one that fails a check, goes through parse_line and _Walk.step, which name
# the problem, so both paths reach the same verdict.
EVENT_PREFIX = b'{"type":"event","seq":'
_EVENT_PREFIX_TEXT = EVENT_PREFIX.decode()
_EVENT, _SEQ = b'","event":', b'"seq":'
_HEADER = b'%b%b"prev_hash":"%b","hash":"'  # EVENT_PREFIX, b"<seq>,", the previous event's hash


def export_checkpoints(lines: Iterable[str | bytes], *, skip_damaged: bool = False) -> list[Checkpoint]:
    checkpoints = []
    for number, line in enumerate(lines, 1):
        if line[:22] in (EVENT_PREFIX, _EVENT_PREFIX_TEXT):
            continue
        try:
            item = parse_line(number, line)
        except UnusableInput:
            if skip_damaged:  # reported in order by the walk over the events
                continue
            raise
        if isinstance(item, Checkpoint):
            checkpoints.append(item)
    return checkpoints


def verify_export(path: str, key: str | None, extra_checkpoints: list[Checkpoint] = ()) -> Report:
    """Check an export file in one read. The checkpoints in it name the event they follow (the
    export's head), or one before; the hash of an earlier event named by a checkpoint met later
    is looked up in a second read, only then."""
    extra, found = list(extra_checkpoints), []
    walk = _Walk(Report(), {cp.seq for cp in extra}, stop_at_first=True)
    with open(path, "rb") as fh:
        _walk_export(fh, walk, found)
    earlier = {cp.seq for cp in found if 0 < cp.seq <= walk.report.head_seq} - walk.hashes.keys()
    if earlier and walk.report.ok:
        with open(path, "rb") as fh:
            walk.hashes.update((item[0], item[2]) for item in export_events(fh)
                               if isinstance(item, tuple) and item[0] in earlier)
    return walk.finish(found + extra, key)


def _walk_export(fh: BinaryIO, walk: _Walk, checkpoints: list[Checkpoint]) -> None:
    """The walk over an export file, a megabyte of lines in memory at a time.

    The header a line must start with is known before it is read (its seq, the hash it links to),
    so one comparison checks it; the chain's digest is carried over, so each event costs one
    SHA-256 and a few comparisons. The first line that is not exactly as expected is handed to the
    walk's own checks, and the fast path resumes from where the walk then stands. Checkpoint lines
    are collected into `checkpoints`.
    """
    sha256, unhex, wanted, hashes = hashlib.sha256, binascii.a2b_hex, walk.wanted, walk.hashes
    expected, readable, number = walk.expected_seq, False, 0
    prev_digest, prev_hex = bytes.fromhex(walk.prev), walk.prev.encode()
    seq_comma = b"%d," % expected
    header = _HEADER % (EVENT_PREFIX, seq_comma, prev_hex)
    h = len(header)
    first_expected = expected  # line numbers are counted only when the slow path needs them
    while chunk := fh.readlines(1 << 20):
        for line in chunk:
            canonical = line[h + 74:-2]
            digest = sha256(prev_digest + canonical).digest()
            event_hex = line[h:h + 64]
            try:  # the seq is read from contents only once the hash vouched for them
                fast = (line.startswith(header) and line.startswith(_EVENT, h + 64) and line.endswith(b"}\n")
                        and unhex(event_hex) == digest
                        and canonical.startswith(seq_comma, canonical.rfind(_SEQ) + 6))
            except ValueError:  # binascii.Error: not hex
                fast = False
            if fast:
                if expected in wanted:
                    hashes[expected] = event_hex.decode()
                prev_digest, prev_hex, readable = digest, event_hex, True
                expected += 1
                seq_comma = b"%d," % expected
                header = _HEADER % (EVENT_PREFIX, seq_comma, prev_hex)
                h = len(header)
                continue
            # Bring the walk up to this line, let it parse and judge the line, go on from there.
            number += expected - first_expected + 1
            _settle(walk, expected, prev_hex)
            try:
                item = parse_line(number, line)
            except UnusableInput as exc:
                if not readable:
                    raise
                item = DamagedLine(number, exc.problem)
            readable = readable or item is not None
            if isinstance(item, Checkpoint):
                checkpoints.append(item)
                if item.seq >= walk.expected_seq:
                    wanted.add(item.seq)
                elif item.seq == walk.expected_seq - 1:  # the event just before: the usual place
                    hashes[item.seq] = walk.prev
            elif item is not None and not walk.step(item):
                return
            expected = first_expected = walk.expected_seq
            prev_hex = walk.prev.encode()
            try:
                prev_digest = bytes.fromhex(walk.prev)
            except ValueError:  # a broken hash, when the walk goes on past problems
                prev_digest = b""
            seq_comma = b"%d," % expected
            header = _HEADER % (EVENT_PREFIX, seq_comma, prev_hex)
            h = len(header)
    _settle(walk, expected, prev_hex)


def _settle(walk: _Walk, expected: int, prev_hex: bytes) -> None:
    """Record in the walk the events the fast path accepted since it last stood at walk.expected_seq."""
    if expected > walk.expected_seq:
        walk.report.events += expected - walk.expected_seq
        walk.report.head_seq, walk.report.head_hash = expected - 1, prev_hex.decode()
        walk.expected_seq, walk.prev = expected, walk.report.head_hash


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Verify a Ringfence audit export offline.")
    parser.add_argument("export", help="JSON Lines export file")
    parser.add_argument("--key", help="checkpoint HMAC key (or AUDIT_CHECKPOINT_KEY in the environment)")
    parser.add_argument("--key-file", help="file holding the checkpoint key")
    parser.add_argument("--checkpoints", help="extra checkpoint file (JSON Lines) shipped outside the database")
    args = parser.parse_args(argv)
    key = args.key or os.environ.get("AUDIT_CHECKPOINT_KEY")
    if args.key_file:
        with open(args.key_file, encoding="utf-8") as fh:
            key = fh.read().strip()
    try:
        extra: list[Checkpoint] = []
        if args.checkpoints:
            with open(args.checkpoints, encoding="utf-8") as fh:
                extra = export_checkpoints(fh)
        report = verify_export(args.export, key, extra)
    except OSError as exc:
        print(f"cannot read input: {exc}", file=sys.stderr)
        return 2
    except UnusableInput as exc:
        print(exc, file=sys.stderr)
        return 2
    print(report.summary())
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
