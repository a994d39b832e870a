#!/usr/bin/env python3
"""Verify a Ringfence audit export offline. Standard library only: copy this one file anywhere.

    python3 verify_audit.py export.jsonl [--key-file KEYFILE | --key KEY] [--checkpoints FILE] [--workers N]

An export is JSON Lines: one {"type": "event", "seq", "prev_hash", "hash", "event": {...}} per
event and {"type": "checkpoint", "seq", "hash", "at", "signature"} lines for the signed chain
heads. The verifier checks every link (hash = SHA-256(prev_hash bytes ‖ canonical JSON of the
event)), that seq runs 1, 2, 3 … with no gap, and, given the checkpoint key, that every
signed checkpoint is on the chain and that the chain reaches the newest one; only the
checkpoints reveal removed tail events or a rewritten suffix. Exit status 0 when intact, 1
when broken (the first broken event is named), 2 on unusable input.
"""

from __future__ import annotations

import os
import sys

if __name__ == "__main__" and sys.path and os.path.abspath(sys.path[0]) == os.path.dirname(os.path.abspath(__file__)):
    del sys.path[0]  # run from inside the project: its modules (selectors.py) must not shadow the standard library

import argparse
import binascii
import hashlib
import hmac
import json
import mmap
import multiprocessing
import re
import stat
import threading
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from itertools import chain, repeat
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
# EVENT_PREFIX, then b"<seq>,", the previous event's hash and this event's hash
_HEADER = EVENT_PREFIX + b'%b"prev_hash":"%b","hash":"%b","event":'
_SEQ, _END = b'"seq":', b"}\n"
PARALLEL_MIN_BYTES = 16 << 20  # the least a process is given: below it, starting one costs more
_FIRST_HEADER = re.compile(rb'\{"type":"event","seq":([1-9][0-9]{0,18}),"prev_hash":"([0-9a-f]{64})",')


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


def default_workers() -> int:
    return min(os.cpu_count() or 1, 8)


def verify_export(path: str, key: str | None, extra_checkpoints: list[Checkpoint] = (), *,
                  workers: int = 1, min_stretch: int = PARALLEL_MIN_BYTES) -> Report:
    """Check an export file in one read. The checkpoints in it name the event they follow (the
    export's head), or one before; the hash of an earlier event named by a checkpoint met later
    is looked up in a second read, only then.

    With `workers` > 1 and a large file, processes first check stretches of the file side by side
    (every line carries the hash it links to, so each stretch can be checked on its own) and the
    stretches are joined end to start; the walk goes on alone from the first stretch that was not
    perfect, so its verdict and the event it names are those of a walk from the first line."""
    extra, found = list(extra_checkpoints), []
    walk = _Walk(Report(), {cp.seq for cp in extra}, stop_at_first=True)
    offset, lines_before = _parallel_prefix(path, walk, found, workers, min_stretch) if workers > 1 else (0, 0)
    with open(path, "rb") as fh:
        _walk_export(fh, walk, found, offset, lines_before)
    earlier = {cp.seq for cp in found if 0 < cp.seq <= walk.report.head_seq} - walk.hashes.keys()
    if earlier and walk.report.ok:
        with open(path, "rb") as fh:
            walk.hashes.update((item[0], item[2]) for item in export_events(fh)
                               if isinstance(item, tuple) and item[0] in earlier)
    return walk.finish(found + extra, key)


def _exact_events(lines: Iterator[bytes], expected: int, prev_hex: bytes, wanted: set[int],
                  hashes: dict[int, str]) -> tuple[int, bytes, bytes | None]:
    """Accept lines while each is event #expected exactly as the exporter writes it, linked to
    `prev_hex`; answer where the walk then stands and the first line not accepted (None at the end).

    The header a line must start with is known once its contents are hashed (its seq, the hash it
    links to, its own hash), so one comparison checks it; each event costs one SHA-256 and a few
    byte comparisons. The seq inside the contents is read only once the hash vouched for them.
    """
    sha256, hexlify, header = hashlib.sha256, binascii.b2a_hex, _HEADER
    try:
        prev_digest = binascii.a2b_hex(prev_hex)
    except ValueError:  # a broken hash, when a walk goes on past problems
        return expected, prev_hex, next(lines, None)
    start = len(header % (b"%d," % expected, prev_hex, prev_hex))  # where the contents start
    longer = 10 ** len(str(expected))  # the first seq with one more digit
    for line in lines:
        digest = sha256(prev_digest + line[start:-2]).digest()
        event_hex = hexlify(digest)
        seq_comma = b"%d," % expected
        if not (line.startswith(header % (seq_comma, prev_hex, event_hex)) and line[-2:] == _END
                and line.startswith(seq_comma, line.rfind(_SEQ, start) + 6)):
            return expected, prev_hex, line
        if expected in wanted:
            hashes[expected] = event_hex.decode()
        prev_digest, prev_hex = digest, event_hex
        expected += 1
        if expected == longer:
            start, longer = start + 1, longer * 10
    return expected, prev_hex, None


def _lines(fh: BinaryIO, start: int = 0, end: int | None = None) -> Iterator[bytes]:
    """The file's lines from byte `start` up to byte `end` (line starts; None: the end of the file),
    read from a memory map: the cheapest way to have them as bytes, one at a time."""
    size = os.fstat(fh.fileno())
    if not stat.S_ISREG(size.st_mode):  # a pipe: read on from where it stands
        return chain.from_iterable(iter(lambda: fh.readlines(1 << 20), []))
    end = size.st_size if end is None else end
    if end <= start:
        return iter(())
    base = start - start % mmap.ALLOCATIONGRANULARITY
    mapped = mmap.mmap(fh.fileno(), end - base, offset=base, access=mmap.ACCESS_READ)
    if hasattr(mapped, "madvise") and hasattr(mmap, "MADV_SEQUENTIAL"):
        mapped.madvise(mmap.MADV_SEQUENTIAL)
    mapped.seek(start - base)
    return iter(mapped.readline, b"")


def _walk_export(fh: BinaryIO, walk: _Walk, checkpoints: list[Checkpoint], offset: int = 0,
                 lines_before: int = 0) -> None:
    """The walk over an export file from byte `offset` (after `lines_before` lines, all events the
    walk accepted). Lines in the exporter's layout are checked on their bytes; the first that
    is not exactly as expected is handed to the walk's own checks, and the byte checks resume from
    where the walk then stands. Checkpoint lines are collected into `checkpoints`."""
    lines = _lines(fh, offset)
    number, readable = lines_before, lines_before > 0
    while True:
        first = walk.expected_seq
        expected, prev_hex, line = _exact_events(lines, first, walk.prev.encode(), walk.wanted, walk.hashes)
        _settle(walk, expected, prev_hex.decode())
        number += expected - first
        readable = readable or expected > first
        if line is None:
            return
        number += 1
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
                walk.wanted.add(item.seq)
            elif item.seq == walk.expected_seq - 1:  # the event just before: the usual place
                walk.hashes[item.seq] = walk.prev
        elif item is not None and not walk.step(item):
            return


def _settle(walk: _Walk, expected: int, prev_hex: str) -> None:
    """Record in the walk the events accepted on their bytes since it last stood at walk.expected_seq."""
    if expected > walk.expected_seq:
        walk.report.events += expected - walk.expected_seq
        walk.report.head_seq, walk.report.head_hash = expected - 1, prev_hex
        walk.expected_seq, walk.prev = expected, prev_hex


def _check_stretch(path: str, start: int, end: int, wanted: set[int]) -> tuple:
    """One stretch of an export checked on its own, from the seq and link its first line names.

    Answers (first seq, the hash it links to, the seq after the last event accepted, that event's
    hash, lines read, the checkpoints met as (checkpoint, seq after, hash before), whether every
    line up to `end` was accepted, hashes of wanted seqs). Checking stops at the first line that is
    neither an event exactly as expected nor a checkpoint: the walk alone judges it.
    """
    with open(path, "rb") as fh:
        lines = _lines(fh, start, end)
        first = next(lines, b"")
        match = _FIRST_HEADER.match(first)
        if match is None:
            return 0, "", 0, "", 0, [], False, {}
        seq, first_prev = int(match[1]), match[2]
        expected, prev_hex, count, met, hashes, lines = seq, first_prev, 0, [], {}, chain((first,), lines)
        while True:
            after, prev_hex, line = _exact_events(lines, expected, prev_hex, wanted, hashes)
            count, expected = count + after - expected, after
            whole = line is None
            if not whole:
                count += 1
                try:
                    item = parse_line(count, line)
                except UnusableInput:
                    item = False
                if item is None:  # a blank line
                    continue
                if isinstance(item, Checkpoint):
                    met.append((item, expected, prev_hex.decode()))
                    continue
            return seq, first_prev.decode(), expected, prev_hex.decode(), count, met, whole, hashes


def _parallel_prefix(path: str, walk: _Walk, checkpoints: list[Checkpoint], workers: int,
                     min_bytes: int) -> tuple[int, int]:
    """Check stretches of the file in `workers` processes (each at least `min_bytes`) and settle the
    walk over the run of whole stretches that join from the start; answer the byte offset and the
    number of lines the walk goes on from (0, 0 when nothing was settled). Checkpoints met are
    collected into `checkpoints`; the hash of one that names an event other than the one just
    before it is left to verify_export's second read."""
    size = os.path.getsize(path)
    workers = min(workers, size // max(min_bytes, 1))
    if workers < 2:
        return 0, 0
    with open(path, "rb") as fh:
        cuts = [0]
        for i in range(1, workers):
            fh.seek(size * i // workers)
            fh.readline()
            cuts.append(fh.tell())
    stretches = [(a, b) for a, b in zip(cuts, [*cuts[1:], size], strict=True) if a < b]
    # fork is cheap and the stretches need nothing from the parent, but forking a threaded process
    # is unsafe: then each process starts afresh
    method = "fork" if "fork" in multiprocessing.get_all_start_methods() and threading.active_count() == 1 else "spawn"
    offset = lines = 0
    try:
        with ProcessPoolExecutor(len(stretches), mp_context=multiprocessing.get_context(method)) as pool:
            results = pool.map(_check_stretch, repeat(path), *zip(*stretches, strict=True), repeat(walk.wanted))
            for (_, end), (seq, prev_hex, expected, last_hex, count, met, whole, hashes) in zip(
                    stretches, results, strict=True):
                if not whole or seq != walk.expected_seq or prev_hex != walk.prev:
                    break
                walk.hashes.update(hashes)
                for cp, after, before in met:
                    checkpoints.append(cp)
                    if cp.seq == after - 1:
                        walk.hashes[cp.seq] = before
                _settle(walk, expected, last_hex)
                offset, lines = end, lines + count
    except (OSError, BrokenProcessPool):  # no processes to be had: the walk does it all alone
        pass
    return offset, lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Verify a Ringfence audit export offline.")
    parser.add_argument("export", help="JSON Lines export file")
    parser.add_argument("--key", help="checkpoint HMAC key (or AUDIT_CHECKPOINT_KEY in the environment)")
    parser.add_argument("--key-file", help="file holding the checkpoint key")
    parser.add_argument("--checkpoints", help="extra checkpoint file (JSON Lines) shipped outside the database")
    parser.add_argument("--workers", type=int, default=default_workers(),
                        help="processes that check a large export side by side (default: one per core, at most 8)")
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
        report = verify_export(args.export, key, extra, workers=max(args.workers, 1))
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
