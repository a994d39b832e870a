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
import hashlib
import hmac
import json
import os
import sys
from dataclasses import dataclass, field
from typing import Iterable, Iterator

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
    report = Report()
    expected_seq, prev = 1, GENESIS
    hashes: dict[int, str] = {}
    cps = list(checkpoints)
    wanted = {cp.seq for cp in cps}
    for item in events:
        if isinstance(item, DamagedLine):
            report.fail(expected_seq, f"line {item.number} of the export is damaged ({item.problem}): event "
                                      f"#{expected_seq} or a checkpoint there was altered.")
            if stop_at_first:
                break
            continue
        seq, prev_hash, event_hash, canonical = item
        report.events += 1
        if seq != expected_seq:
            if seq > expected_seq:
                report.fail(expected_seq, f"event #{expected_seq} is missing (next event found is #{seq}).")
            else:
                report.fail(seq, f"event #{seq} appears out of order or twice (expected #{expected_seq}).")
            if stop_at_first:
                break
        if prev_hash != prev:
            report.fail(seq, f"event #{seq} does not link to the event before it (prev_hash differs).")
            if stop_at_first:
                break
        if chain_hash(prev_hash, canonical) != event_hash:
            report.fail(seq, f"event #{seq}'s contents do not match its hash (the event was altered).")
            if stop_at_first:
                break
        try:
            inner_seq = json.loads(canonical).get("seq")
        except (ValueError, AttributeError):
            inner_seq = None
        if type(inner_seq) is not int or inner_seq != seq:
            report.fail(seq, f"event #{seq} carries seq {inner_seq!r} inside its hashed contents.")
            if stop_at_first:
                break
        if seq in wanted:
            hashes[seq] = event_hash
        prev, expected_seq = event_hash, seq + 1
        report.head_seq, report.head_hash = seq, event_hash
    if report.ok or not stop_at_first:
        _check_checkpoints(report, cps, hashes, key)
    return report


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


def export_checkpoints(lines: Iterable[str], *, skip_damaged: bool = False) -> list[Checkpoint]:
    checkpoints = []
    for number, line in enumerate(lines, 1):
        try:
            item = parse_line(number, line)
        except UnusableInput:
            if skip_damaged:  # reported in order by export_events
                continue
            raise
        if isinstance(item, Checkpoint):
            checkpoints.append(item)
    return checkpoints


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


def verify_export(path: str, key: str | None, extra_checkpoints: list[Checkpoint] = ()) -> Report:
    with open(path, encoding="utf-8", errors="replace") as fh:
        checkpoints = export_checkpoints(fh, skip_damaged=True) + list(extra_checkpoints)
    with open(path, encoding="utf-8", errors="replace") as fh:
        return verify(export_events(fh), checkpoints, key)


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
