#!/usr/bin/env python3
"""Verify a Ringfence audit export offline. Standard library only (plus `cryptography` for the
Ed25519 checks with --public-key): copy this one file anywhere.

    python3 verify_audit.py export.jsonl [--key-file KEYFILE | --key KEY] [--checkpoints FILE] [--workers N]
                                         [--public-key VKEY_OR_FILE]
    python3 verify_audit.py --bundle evidence.json --public-key VKEY_OR_FILE
    python3 verify_audit.py --consistency OLD_NOTE NEW_NOTE PROOF_JSON --public-key VKEY_OR_FILE

An export is JSON Lines: one {"type": "event", "seq", "prev_hash", "hash", "event": {...}} per
event and {"type": "checkpoint", "seq", "hash", "at", "signature"} lines for the signed chain
heads. The verifier checks every link (hash = SHA-256(prev_hash bytes ‖ canonical JSON of the
event)), that seq runs 1, 2, 3 … with no gap, and, given the checkpoint key, that every
signed checkpoint is on the chain and that the chain reaches the newest one; only the
checkpoints reveal removed tail events or a rewritten suffix.

The log is also an RFC 9162 Merkle tree (leaf = an event's canonical JSON bytes, leaf index =
seq - 1) whose signed tree heads are C2SP tlog checkpoints in C2SP signed notes (Ed25519):
{"type": "tlog_checkpoint", "note": "…"} lines. Given the log's public key (its verifier key
`name+<key id>+<base64 key>`, or a file holding it), each note's signature is checked and its root
compared with the Merkle root of the export's events at its tree size. --bundle checks an evidence
bundle's events against their inclusion proofs and signed checkpoint; --consistency checks that a
newer signed checkpoint extends an older one (a forked log is named).

Exit status 0 when intact, 1 when broken (the first broken thing is named), 2 on unusable input:
a file, key or proof that cannot be read, or a line that is not an export line, named with its
first problem ("line 7: seq is not a whole number"), never a traceback.
"""

from __future__ import annotations

import os
import sys

if __name__ == "__main__" and sys.path and os.path.abspath(sys.path[0]) == os.path.dirname(os.path.abspath(__file__)):
    del sys.path[0]  # run from inside the project: its modules (selectors.py) must not shadow the standard library

import argparse
import base64
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
from itertools import chain, islice, repeat
from typing import BinaryIO, Callable, Iterable, Iterator, Sequence

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
    tree_heads: int = 0  # signed tlog checkpoints whose Merkle root the events were found to have
    first_broken_seq: int | None = None
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    ok_line: str | None = None  # what "OK" says when this is not a report on an export (a bundle, two checkpoints)

    @property
    def ok(self) -> bool:
        return not self.problems

    def fail(self, seq: int | None, message: str) -> None:
        if self.first_broken_seq is None and seq is not None:
            self.first_broken_seq = seq
        self.problems.append(message)

    def summary(self) -> str:
        lines = []
        if self.ok and self.ok_line:
            lines.append(self.ok_line)
        elif self.ok:
            heads = (f", {self.tree_heads} signed tree head(s) verified against the recomputed Merkle root"
                     if self.tree_heads else "")
            lines.append(f"OK: {self.events} events, head #{self.head_seq} {self.head_hash[:16]}…, "
                         f"{self.checkpoints} checkpoint(s) verified{heads}.")
        else:
            where = f" at event #{self.first_broken_seq}" if self.first_broken_seq is not None else ""
            lines.append(f"BROKEN{where}: {self.problems[0]}")
            lines.extend(f"  also: {p}" for p in self.problems[1:5])
        lines.extend(f"note: {n}" for n in self.notes)
        return "\n".join(lines)


def verify(events: Iterable[tuple[int, str, str, str]], checkpoints: Iterable[Checkpoint] = (),
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
        # With signed tree heads to check: the Merkle tree of the events so far (leaf = canonical bytes),
        # its state after each wanted seq, and the tlog checkpoints met.
        self.tree: _Leaves | None = None
        self.marks: dict[int, CompactRange] = {}
        self.heads: list[TlogCheckpoint] = []

    def step(self, item: tuple[int, str, str, str]) -> bool:
        """Check one event; False when the walk stops here."""
        report = self.report
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
        if self.tree is not None:
            self.tree.add(canonical.encode("utf-8"))
        if seq in self.wanted:
            self.hashes[seq] = event_hash
            if self.tree is not None:
                self.marks[seq] = self.tree.copy()
        self.prev, self.expected_seq = event_hash, seq + 1
        report.head_seq, report.head_hash = seq, event_hash
        return True

    def meet_head(self, cp: TlogCheckpoint) -> None:
        """A tlog checkpoint line: its root is wanted at its size, usually the event just passed."""
        self.heads.append(cp)
        size = cp.size
        if self.tree is None or size is None:
            return
        if size == self.expected_seq - 1 and self.tree.end == size:
            self.marks[size] = self.tree.copy()
        elif size >= self.expected_seq:
            self.wanted.add(size)

    def finish(self, cps: list[Checkpoint], key: str | None) -> Report:
        if self.report.ok or not self.stop_at_first:
            _check_checkpoints(self.report, cps, self.hashes, key, tree_heads=len(self.heads))
        return self.report


def _check_checkpoints(report: Report, cps: list[Checkpoint], hashes: dict[int, str], key: str | None, *,
                       tree_heads: int = 0) -> None:
    if not cps:
        if not tree_heads:
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


MAX_SEQ = 2**63 - 1  # the database's bigint
_HEX64 = re.compile(r"[0-9a-f]{64}")


class _Malformed(ValueError):
    """One named problem of a line (its message is what the person reads)."""


def _refuse_constant(name: str) -> float:
    raise _Malformed(f"it holds {name}, which JSON does not allow")


def _loads(line: str | bytes) -> object:
    """Strict JSON: UTF-8, no NaN or Infinity, nesting the parser can hold. (A number out of a
    float's range, 1e999, reads as infinity: it is refused where it stands, by field.)"""
    if isinstance(line, bytes):
        try:
            line = line.decode("utf-8")
        except UnicodeDecodeError:
            raise _Malformed("it is not UTF-8 text") from None
    try:
        return json.loads(line, parse_constant=_refuse_constant)
    except RecursionError:
        raise _Malformed("JSON nested too deeply") from None
    except _Malformed:
        raise
    except ValueError as exc:  # json.JSONDecodeError, or an integer of thousands of digits
        if "integer string conversion" in str(exc):
            raise _Malformed("a number has more than 4,300 digits") from None
        raise _Malformed(f"not a Ringfence export line (not JSON: {exc})") from None


def _whole(obj: dict, name: str, least: int) -> int:
    value = obj.get(name)
    if name not in obj:
        raise _Malformed(f"{name} is missing")
    if not isinstance(value, int) or isinstance(value, bool):
        raise _Malformed(f"{name} is not a whole number")
    if not least <= value <= MAX_SEQ:
        raise _Malformed(f"{name} {value if abs(value) < 10**24 else '…'} is out of range ({least} to 2^63 - 1)")
    return value


def _hex64(obj: dict, name: str) -> str:
    value = obj.get(name)
    if name not in obj:
        raise _Malformed(f"{name} is missing")
    if not isinstance(value, str) or not _HEX64.fullmatch(value):
        raise _Malformed(f"{name} is not 64 hex digits")
    return value


def _text(obj: dict, name: str) -> str:
    value = obj.get(name)
    if not isinstance(value, str):
        raise _Malformed(f"{name} is {'missing' if name not in obj else 'not text'}")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise _Malformed(f"{name} holds a lone surrogate, which UTF-8 cannot carry") from None
    return value


def _contents(obj: dict) -> str:
    """The event's canonical JSON, as the exporter hashed it."""
    if "event" not in obj:
        raise _Malformed("event is missing")
    if not isinstance(obj["event"], dict):
        raise _Malformed("event is not a JSON object")
    try:
        canonical = canonical_json(obj["event"])
        canonical.encode("utf-8")
    except RecursionError:
        raise _Malformed("JSON nested too deeply") from None
    except UnicodeEncodeError:
        raise _Malformed("event holds a lone surrogate, which UTF-8 cannot carry") from None
    except ValueError:  # canonical_json allows no infinity
        raise _Malformed("event holds a number out of range (such as 1e999)") from None
    return canonical


def parse_line(number: int, line: str | bytes) -> tuple[int, str, str, str] | Checkpoint | TlogCheckpoint | None:
    """One line of an export: an event (seq, prev_hash, hash, canonical contents), a checkpoint,
    a tlog checkpoint, or None for a blank line. A line that is none of these raises UnusableInput
    naming the line and its first problem ("line 7: seq is not a whole number")."""
    if not line.strip():
        return None
    try:
        obj = _loads(line)
        if not isinstance(obj, dict):
            raise _Malformed("not a Ringfence export line (not a JSON object)")
        kind = obj.get("type")
        if kind == "event":
            return _whole(obj, "seq", 1), _hex64(obj, "prev_hash"), _hex64(obj, "hash"), _contents(obj)
        if kind == "checkpoint":
            return Checkpoint(_whole(obj, "seq", 0), _hex64(obj, "hash"), _text(obj, "at"), _hex64(obj, "signature"))
        if kind == "tlog_checkpoint":
            return TlogCheckpoint(_text(obj, "note"), number)
        if "type" not in obj:
            raise _Malformed("not a Ringfence export line (it has no \"type\")")
        shown = repr(kind) if isinstance(kind, str) and len(kind) < 40 else "of another kind"
        raise _Malformed(f"not a Ringfence export line (its type is {shown})")
    except _Malformed as exc:
        raise UnusableInput(f"line {number}: {exc}.", problem=str(exc)) from None


@dataclass
class TlogCheckpoint:
    """A `{"type": "tlog_checkpoint", "note": …}` line: a C2SP checkpoint as a signed note, read
    unchecked (`size` None when its body is not a checkpoint) until open_checkpoint checks it."""

    note: str
    line: int = 0  # its line in the file
    source: str = "export"
    size: int | None = field(init=False, default=None)

    def __post_init__(self) -> None:
        try:
            self.size = parse_checkpoint(split_note(self.note)[0])[1]
        except NoteError:
            self.size = None

    @property
    def where(self) -> str:
        return f"the tlog checkpoint on line {self.line} of the {self.source}"


class UnusableInput(Exception):
    def __init__(self, message: str, *, problem: str = "") -> None:
        super().__init__(message)
        self.problem = problem or message


def export_events(lines: Iterable[str | bytes]) -> Iterator[tuple[int, str, str, str]]:
    """Events in file order (a reordered file is a broken chain), one line in memory at a time.
    A line that is not an export line, wherever it is, raises UnusableInput naming it."""
    for number, line in enumerate(lines, 1):
        item = parse_line(number, line)
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


def _export_items(lines: Iterable[str | bytes], kind: type, skip_damaged: bool) -> list:
    """The non-event lines of an export of one kind (Checkpoint or TlogCheckpoint), in order."""
    items = []
    for number, line in enumerate(lines, 1):
        if line[:22] in (EVENT_PREFIX, _EVENT_PREFIX_TEXT):
            continue
        try:
            item = parse_line(number, line)
        except UnusableInput:
            if skip_damaged:  # reported in order by the walk over the events
                continue
            raise
        if isinstance(item, kind):
            items.append(item)
    return items


def export_checkpoints(lines: Iterable[str | bytes], *, skip_damaged: bool = False) -> list[Checkpoint]:
    return _export_items(lines, Checkpoint, skip_damaged)


def export_tlog_checkpoints(lines: Iterable[str | bytes], *, skip_damaged: bool = False) -> list[TlogCheckpoint]:
    """The tlog checkpoint lines of an export or of a checkpoints file shipped outside the database."""
    return _export_items(lines, TlogCheckpoint, skip_damaged)


def default_workers() -> int:
    return min(os.cpu_count() or 1, 8)


def verify_export(path: str, key: str | None, extra_checkpoints: list[Checkpoint] = (), *,
                  workers: int = 1, min_stretch: int = PARALLEL_MIN_BYTES,
                  public_key: str | NoteVerifier | None = None, extra_heads: list[TlogCheckpoint] = (),
                  progress: Callable[[int], None] | None = None) -> Report:
    """Check an export file in one read. The checkpoints in it name the event they follow (the
    export's head), or one before; the hash of an earlier event named by a checkpoint met later
    is looked up in a second read, only then.

    With `workers` > 1 and a large file, processes first check stretches of the file side by side
    (every line carries the hash it links to, so each stretch can be checked on its own) and the
    stretches are joined end to start; the walk goes on alone from the first stretch that was not
    perfect, so its verdict and the event it names are those of a walk from the first line.

    With `public_key` (a vkey), the tlog checkpoints (signed tree heads) in the file and in
    `extra_heads` are checked too: each note's signature, and its root against the Merkle tree of
    the events (leaf index = seq - 1), built during the same walk.

    A line that is not an export line raises UnusableInput naming it, and so does a file with no
    export line at all. `progress(bytes)` follows the walk's reading (not the processes')."""
    extra, found = list(extra_checkpoints), []
    verifier = parse_vkey(public_key) if isinstance(public_key, str) else public_key
    walk = _Walk(Report(), {cp.seq for cp in extra}, stop_at_first=True)
    if verifier is not None:
        walk.tree = _Leaves()
        walk.wanted |= {cp.size for cp in extra_heads if cp.size is not None}
    offset, lines_before = _parallel_prefix(path, walk, found, workers, min_stretch) if workers > 1 else (0, 0)
    with open(path, "rb") as fh:
        _walk_export(fh, walk, found, offset, lines_before, progress)
    if not (walk.report.events or walk.report.problems or found or walk.heads):
        raise UnusableInput("the file holds no events and no checkpoints: it is not a Ringfence audit export.")
    earlier = {cp.seq for cp in found if 0 < cp.seq <= walk.report.head_seq} - walk.hashes.keys()
    if earlier and walk.report.ok:
        with open(path, "rb") as fh:
            walk.hashes.update((item[0], item[2]) for item in export_events(fh)
                               if isinstance(item, tuple) and item[0] in earlier)
    heads = walk.heads + list(extra_heads)
    report = walk.finish(found + extra, key)
    if heads and report.ok:
        if verifier is None:
            report.notes.append(f"no public key given: {len(heads)} tlog checkpoint(s) (signed tree heads) were not "
                                "checked; removal of the newest events or a rewritten suffix cannot be detected "
                                "without them.")
        else:
            _check_tree_heads(report, heads, _roots_at(path, walk, heads), verifier)
    elif verifier is not None and not heads:
        report.notes.append("the export holds no tlog checkpoints (signed tree heads): the public key was not used.")
    return report


def _exact_events(lines: Iterator[bytes], expected: int, prev_hex: bytes, wanted: set[int],
                  hashes: dict[int, str], tree: _Leaves | None = None,
                  marks: dict[int, CompactRange] | None = None) -> tuple[int, bytes, bytes | None]:
    """Accept lines while each is event #expected exactly as the exporter writes it, linked to
    `prev_hex`; answer where the walk then stands and the first line not accepted (None at the end).

    The header a line must start with is known once its contents are hashed (its seq, the hash it
    links to, its own hash), so one comparison checks it; each event costs one SHA-256 and a few
    byte comparisons. The seq inside the contents is read only once the hash vouched for them.
    With a `tree`, each accepted event's contents are also added to it as a leaf (one more SHA-256,
    later, with the tree's), and its state after each wanted seq is kept in `marks`.
    """
    sha256, hexlify, header = hashlib.sha256, binascii.b2a_hex, _HEADER
    try:
        prev_digest = binascii.a2b_hex(prev_hex)
    except ValueError:  # a broken hash, when a walk goes on past problems
        return expected, prev_hex, next(lines, None)
    start = len(header % (b"%d," % expected, prev_hex, prev_hex))  # where the contents start
    longer = 10 ** len(str(expected))  # the first seq with one more digit
    leaves = tree.pending if tree is not None else None
    for line in lines:
        contents = line[start:-2]
        digest = sha256(prev_digest + contents).digest()
        event_hex = hexlify(digest)
        seq_comma = b"%d," % expected
        if not (line.startswith(header % (seq_comma, prev_hex, event_hex)) and line[-2:] == _END
                and line.startswith(seq_comma, line.rfind(_SEQ, start) + 6)):
            return expected, prev_hex, line
        if leaves is not None:
            leaves.append(contents)
            if len(leaves) == tree.room:
                tree.settle()
        if expected in wanted:
            hashes[expected] = event_hex.decode()
            if tree is not None:
                marks[expected] = tree.copy()
        prev_digest, prev_hex = digest, event_hex
        expected += 1
        if expected == longer:
            start, longer = start + 1, longer * 10
    return expected, prev_hex, None


PROGRESS_LINES = 8192  # lines between two calls of a walk's progress callback


def _lines(fh: BinaryIO, start: int = 0, end: int | None = None,
           progress: Callable[[int], None] | None = None) -> Iterator[bytes]:
    """The file's lines from byte `start` up to byte `end` (line starts; None: the end of the file),
    read from a memory map: the cheapest way to have them as bytes, one at a time. With `progress`,
    it is called with the bytes read so far every PROGRESS_LINES lines (and at the end)."""
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
    lines = iter(mapped.readline, b"")
    if progress is None:
        return lines

    def blocks() -> Iterator[Iterator[bytes]]:
        # Python runs here once per block, not once per line: the lines themselves stay in C.
        while mapped.tell() < len(mapped):
            progress(base + mapped.tell())
            yield islice(lines, PROGRESS_LINES)
        progress(base + len(mapped))

    return chain.from_iterable(blocks())


def _walk_export(fh: BinaryIO, walk: _Walk, checkpoints: list[Checkpoint], offset: int = 0,
                 lines_before: int = 0, progress: Callable[[int], None] | None = None) -> None:
    """The walk over an export file from byte `offset` (after `lines_before` lines, all events the
    walk accepted). Lines in the exporter's layout are checked on their bytes; the first that
    is not exactly as expected is handed to the walk's own checks, and the byte checks resume from
    where the walk then stands. Checkpoint lines are collected into `checkpoints`. A line that is
    not an export line raises UnusableInput naming it. `progress(bytes read)` is called now and then."""
    lines = _lines(fh, offset, progress=progress)
    number = lines_before
    while True:
        first = walk.expected_seq
        expected, prev_hex, line = _exact_events(lines, first, walk.prev.encode(), walk.wanted, walk.hashes,
                                                 walk.tree, walk.marks)
        _settle(walk, expected, prev_hex.decode())
        number += expected - first
        if line is None:
            return
        number += 1
        item = parse_line(number, line)
        if isinstance(item, Checkpoint):
            checkpoints.append(item)
            if item.seq >= walk.expected_seq:
                walk.wanted.add(item.seq)
            elif item.seq == walk.expected_seq - 1:  # the event just before: the usual place
                walk.hashes[item.seq] = walk.prev
        elif isinstance(item, TlogCheckpoint):
            walk.meet_head(item)
        elif item is not None and not walk.step(item):
            return


def _settle(walk: _Walk, expected: int, prev_hex: str) -> None:
    """Record in the walk the events accepted on their bytes since it last stood at walk.expected_seq."""
    if expected > walk.expected_seq:
        walk.report.events += expected - walk.expected_seq
        walk.report.head_seq, walk.report.head_hash = expected - 1, prev_hex
        walk.expected_seq, walk.prev = expected, prev_hex


def _check_stretch(path: str, start: int, end: int, wanted: set[int], with_tree: bool = False) -> tuple:
    """One stretch of an export checked on its own, from the seq and link its first line names.

    Answers (first seq, the hash it links to, the seq after the last event accepted, that event's
    hash, lines read, the checkpoints met as (checkpoint, seq after, hash before), whether every
    line up to `end` was accepted, hashes of wanted seqs, then, `with_tree`: the tlog checkpoints
    met as (checkpoint, seq after, the stretch's leaves so far), the stretch's leaves as a
    CompactRange and its state after each wanted seq). Checking stops at the first line that is
    neither an event exactly as expected nor a checkpoint: the walk alone judges it.
    """
    with open(path, "rb") as fh:
        lines = _lines(fh, start, end)
        first = next(lines, b"")
        match = _FIRST_HEADER.match(first)
        if match is None:
            return 0, "", 0, "", 0, [], False, {}, [], None, {}
        seq, first_prev = int(match[1]), match[2]
        expected, prev_hex, count, met, hashes, lines = seq, first_prev, 0, [], {}, chain((first,), lines)
        tree, marks, heads = (_Leaves(seq - 1) if with_tree else None), {}, []
        while True:
            after, prev_hex, line = _exact_events(lines, expected, prev_hex, wanted, hashes, tree, marks)
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
                if isinstance(item, TlogCheckpoint):
                    heads.append((item, expected, tree.copy() if tree is not None else None))
                    continue
            return (seq, first_prev.decode(), expected, prev_hex.decode(), count, met, whole, hashes,
                    heads, tree.copy() if tree is not None else None, marks)


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
            results = pool.map(_check_stretch, repeat(path), *zip(*stretches, strict=True), repeat(walk.wanted),
                               repeat(walk.tree is not None))
            for (_, end), (seq, prev_hex, expected, last_hex, count, met, whole, hashes, heads, tree, marks) in zip(
                    stretches, results, strict=True):
                if not whole or seq != walk.expected_seq or prev_hex != walk.prev:
                    break
                walk.hashes.update(hashes)
                for cp, after, before in met:
                    checkpoints.append(cp)
                    if cp.seq == after - 1:
                        walk.hashes[cp.seq] = before
                if walk.tree is not None:  # the stretch's leaves joined to those before it
                    walk.marks.update((at, _joined(walk.tree, mark)) for at, mark in marks.items())
                    for cp, after, leaves in heads:
                        if cp.size == after - 1:
                            walk.marks[cp.size] = _joined(walk.tree, leaves)
                    walk.tree.extend(tree)
                for cp, _, _ in heads:
                    cp.line += lines  # counted from the stretch's start
                    walk.heads.append(cp)
                _settle(walk, expected, last_hex)
                offset, lines = end, lines + count
    except (OSError, BrokenProcessPool):  # no processes to be had: the walk does it all alone
        pass
    return offset, lines


# =================================================================================================
# RFC 9162 Merkle tree, C2SP signed notes and tlog checkpoints
#
# The log's leaves are the events' canonical JSON bytes (UTF-8) in seq order: leaf index = seq - 1.
# Everything here is pure: hashes are raw 32-byte `bytes`, and whoever holds the tree's nodes (the
# server's node table, an in-memory MerkleTree) answers `node(level, index)`: the hash of the
# aligned perfect subtree over leaves [index * 2**level, (index + 1) * 2**level), level 0 being the
# leaf hashes themselves. Proofs read O(log² n) nodes; verification needs no nodes at all.
# Ed25519 comes from the `cryptography` package, imported only where a signature is made or checked,
# so the chain checks above still run where it is not installed.
# =================================================================================================

NodeLookup = Callable[[int, int], bytes]
_sha256 = hashlib.sha256
HASH_SIZE = 32
EMPTY_ROOT = hashlib.sha256(b"").digest()  # MTH({}): the root of the empty tree


def leaf_hash(leaf: bytes) -> bytes:
    """MTH({d}) = SHA-256(0x00 ‖ d) (RFC 9162 §2.1.1)."""
    return hashlib.sha256(b"\x00" + leaf).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    """SHA-256(0x01 ‖ left ‖ right) (RFC 9162 §2.1.1)."""
    return hashlib.sha256(b"\x01" + left + right).digest()


def _split(n: int) -> int:
    """k of RFC 9162 §2.1.1: the largest power of two smaller than n (n > 1)."""
    return 1 << ((n - 1).bit_length() - 1)


def subtree_hash(start: int, end: int, node: NodeLookup) -> bytes:
    """MTH(D[start:end]): the hash of leaves start … end - 1 as a tree of their own.

    Within a tree every subtree a proof needs starts on a multiple of its own width rounded up to a
    power of two, so its left part is one stored node and only its right edge recurses: at most
    log2(end - start) + 1 lookups. Any other range is still answered right, from smaller nodes."""
    if not 0 <= start <= end:
        raise ValueError(f"no subtree over leaves [{start}, {end})")
    width = end - start
    if width == 0:
        return EMPTY_ROOT
    if width & (width - 1) == 0 and start % width == 0:
        level = width.bit_length() - 1
        return node(level, start >> level)
    k = _split(width)
    return node_hash(subtree_hash(start, start + k, node), subtree_hash(start + k, end, node))


def tree_root(size: int, node: NodeLookup) -> bytes:
    """MTH(D[size]): the root of the tree of the first `size` leaves."""
    return subtree_hash(0, size, node)


def inclusion_proof(index: int, size: int, node: NodeLookup) -> list[bytes]:
    """PATH(index, D[size]) of RFC 9162 §2.1.3.1, in its order (the leaf's sibling first)."""
    if not 0 <= index < size:
        raise ValueError(f"leaf index {index} is not in a tree of size {size}")
    path, start, end = [], 0, size
    while end - start > 1:
        k = _split(end - start)
        if index < start + k:
            path.append(subtree_hash(start + k, end, node))
            end = start + k
        else:
            path.append(subtree_hash(start, start + k, node))
            start += k
    path.reverse()
    return path


def consistency_proof(first: int, second: int, node: NodeLookup) -> list[bytes]:
    """PROOF(first, D[second]) of RFC 9162 §2.1.4.1 (SUBPROOF with b = true), in its order.
    Empty when first is 0 or equals second: nothing needs proving then."""
    if not 0 <= first <= second:
        raise ValueError(f"no consistency proof from size {first} to size {second}")
    if first in (0, second):
        return []
    proof, m, start, end, whole = [], first, 0, second, True
    while m != end - start:
        k = _split(end - start)
        if m <= k:
            proof.append(subtree_hash(start + k, end, node))
            end = start + k
        else:
            proof.append(subtree_hash(start, start + k, node))
            start, m, whole = start + k, m - k, False
    if not whole:
        proof.append(subtree_hash(start, end, node))
    proof.reverse()
    return proof


def _is_hash(value: object) -> bool:
    return isinstance(value, bytes) and len(value) == HASH_SIZE


def verify_inclusion(leaf_hash: bytes, index: int, size: int, proof: Sequence[bytes], root: bytes) -> bool:
    """RFC 9162 §2.1.3.2: does `proof` show the leaf with this hash at `index` in the tree of `size`
    leaves whose root is `root`?"""
    if not (0 <= index < size and _is_hash(leaf_hash) and _is_hash(root) and all(map(_is_hash, proof))):
        return False
    fn, sn, r = index, size - 1, leaf_hash
    for p in proof:
        if sn == 0:
            return False
        if fn & 1 or fn == sn:
            r = node_hash(p, r)
            while fn and not fn & 1:
                fn, sn = fn >> 1, sn >> 1
        else:
            r = node_hash(r, p)
        fn, sn = fn >> 1, sn >> 1
    return sn == 0 and hmac.compare_digest(r, root)


def verify_consistency(first: int, second: int, first_root: bytes, second_root: bytes,
                       proof: Sequence[bytes]) -> bool:
    """RFC 9162 §2.1.4.2: is the tree of `first` leaves with `first_root` a prefix of the tree of
    `second` leaves with `second_root`? Equal sizes need equal roots and an empty proof; every tree
    extends the empty one (whose root is SHA-256 of nothing)."""
    if not (0 <= first <= second and _is_hash(first_root) and _is_hash(second_root) and all(map(_is_hash, proof))):
        return False
    if first == second:
        return not proof and hmac.compare_digest(first_root, second_root)
    if first == 0:
        return not proof and hmac.compare_digest(first_root, EMPTY_ROOT)
    if not proof:
        return False
    path = [first_root, *proof] if first & (first - 1) == 0 else list(proof)
    fn, sn = first - 1, second - 1
    while fn & 1:
        fn, sn = fn >> 1, sn >> 1
    fr = sr = path[0]
    for c in path[1:]:
        if sn == 0:
            return False
        if fn & 1 or fn == sn:
            fr, sr = node_hash(c, fr), node_hash(c, sr)
            while fn and not fn & 1:
                fn, sn = fn >> 1, sn >> 1
        else:
            sr = node_hash(sr, c)
        fn, sn = fn >> 1, sn >> 1
    return sn == 0 and hmac.compare_digest(fr, first_root) and hmac.compare_digest(sr, second_root)


def new_nodes(size_before: int, new_leaf_hashes: Iterable[bytes], node: NodeLookup) -> list[tuple[int, int, bytes]]:
    """The (level, index, hash) nodes that appending `new_leaf_hashes` to a tree of `size_before`
    leaves completes, each after both its children: the new leaves themselves (level 0) and every
    perfect subtree they finish. `node` is asked only for nodes that existed before, and only for
    those on the old tree's right edge (one per set bit of size_before, each once)."""
    made: dict[tuple[int, int], bytes] = {}
    out: list[tuple[int, int, bytes]] = []

    def lookup(level: int, index: int) -> bytes:
        found = made.get((level, index))
        return found if found is not None else node(level, index)

    for position, digest in enumerate(new_leaf_hashes, size_before):
        level, index = 0, position
        made[0, index] = digest
        out.append((0, index, digest))
        while index & 1:  # a right child: its parent is complete now
            digest = node_hash(lookup(level, index - 1), digest)
            level, index = level + 1, index >> 1
            made[level, index] = digest
            out.append((level, index, digest))
    return out


class MerkleTree:
    """A whole tree in memory (for exports, tests and small logs): every complete node kept by level."""

    def __init__(self, leaf_hashes: Iterable[bytes] = ()) -> None:
        self.levels: list[list[bytes]] = [[]]
        for digest in leaf_hashes:
            self.append(digest)

    @classmethod
    def of_leaves(cls, leaves: Iterable[bytes]) -> MerkleTree:
        return cls(map(leaf_hash, leaves))

    @property
    def size(self) -> int:
        return len(self.levels[0])

    def append(self, digest: bytes) -> None:
        level = 0
        self.levels[0].append(digest)
        while len(self.levels[level]) % 2 == 0:
            row = self.levels[level]
            if level + 1 == len(self.levels):
                self.levels.append([])
            self.levels[level + 1].append(node_hash(row[-2], row[-1]))
            level += 1

    def node(self, level: int, index: int) -> bytes:
        if level < 0 or index < 0 or level >= len(self.levels) or index >= len(self.levels[level]):
            raise KeyError(f"no complete node ({level}, {index}) in a tree of {self.size} leaves")
        return self.levels[level][index]

    def root(self, size: int | None = None) -> bytes:
        return tree_root(self.size if size is None else self._within(size), self.node)

    def inclusion_proof(self, index: int, size: int | None = None) -> list[bytes]:
        return inclusion_proof(index, self.size if size is None else self._within(size), self.node)

    def consistency_proof(self, first: int, second: int | None = None) -> list[bytes]:
        return consistency_proof(first, self.size if second is None else self._within(second), self.node)

    def _within(self, size: int) -> int:
        if size > self.size:
            raise ValueError(f"the tree has {self.size} leaves, not {size}")
        return size


class CompactRange:
    """The perfect subtrees covering leaves [begin, end), as (level, hash) from left to right:
    what a streaming pass keeps to know the root of every prefix (begin 0) or to hand a stretch of
    leaves hashed elsewhere on to the pass that holds the leaves before it."""

    def __init__(self, begin: int = 0) -> None:
        self.begin = self.end = begin
        self.nodes: list[tuple[int, bytes]] = []

    def append(self, digest: bytes, level: int = 0) -> None:
        """Add the aligned subtree of 2**level leaves that starts at `end`."""
        if self.end % (1 << level):
            raise ValueError(f"a subtree of 2**{level} leaves cannot start at leaf {self.end}")
        nodes = self.nodes
        nodes.append((level, digest))
        self.end += 1 << level
        # merge while the last two are siblings: same level, the left one starting on a multiple of twice its width
        while (len(nodes) > 1 and nodes[-2][0] == nodes[-1][0]
               and (self.end >> nodes[-1][0]) % 2 == 0):
            (level, left), (_, right) = nodes[-2], nodes[-1]
            nodes[-2:] = [(level + 1, node_hash(left, right))]

    def append_leaf(self, digest: bytes) -> None:
        """append(digest, 0), for the walk over an export's events: one call per event."""
        nodes, level = self.nodes, 0
        self.end = end = self.end + 1
        while not (end >> level) & 1 and nodes and nodes[-1][0] == level:
            digest = _sha256(b"\x01" + nodes.pop()[1] + digest).digest()
            level += 1
        nodes.append((level, digest))

    def extend(self, other: CompactRange) -> None:
        if other.begin != self.end:
            raise ValueError(f"leaves [{other.begin}, …) do not follow leaves […, {self.end})")
        for level, digest in other.nodes:
            self.append(digest, level)

    def copy(self) -> CompactRange:
        twin = CompactRange(self.begin)
        twin.end, twin.nodes = self.end, list(self.nodes)
        return twin

    def root(self) -> bytes:
        """The root of the tree of the first `end` leaves (a range that starts at leaf 0)."""
        if self.begin:
            raise ValueError(f"leaves [{self.begin}, {self.end}) are not a whole tree: its root needs leaf 0 on")
        if not self.nodes:
            return EMPTY_ROOT
        digest = self.nodes[-1][1]
        for _, left in reversed(self.nodes[:-1]):
            digest = node_hash(left, digest)
        return digest


_CHUNK_LEVEL = 10
_CHUNK = 1 << _CHUNK_LEVEL


def _perfect_root(row: list[bytes]) -> bytes:
    """The root over 2**k leaf hashes, one level at a time."""
    sha256 = _sha256
    while len(row) > 1:
        row = [sha256(b"\x01" + left + right).digest() for left, right in zip(row[::2], row[1::2], strict=True)]
    return row[0]


class _Leaves:
    """The Merkle leaves of a walk over an export's events, fed one event's canonical bytes at a time:
    gathered, then hashed and folded 1,024 at a time, a list comprehension a level (the cheapest way
    in Python), into a CompactRange. copy() is the CompactRange as it stands."""

    def __init__(self, begin: int = 0) -> None:
        self.done, self.pending = CompactRange(begin), []
        self.room = _CHUNK - begin % _CHUNK  # leaves to gather up to the next whole chunk

    @property
    def end(self) -> int:
        return self.done.end + len(self.pending)

    def add(self, leaf: bytes) -> None:
        self.pending.append(leaf)
        if len(self.pending) == self.room:
            self.settle()

    def settle(self) -> None:
        """Hash the leaves gathered into `done`: a whole aligned chunk as one node, others one by one."""
        sha256, done = _sha256, self.done
        hashes = [sha256(b"\x00" + leaf).digest() for leaf in self.pending]
        self.pending.clear()
        if len(hashes) == _CHUNK:  # room was a whole chunk: done ends on a chunk boundary
            done.append(_perfect_root(hashes), _CHUNK_LEVEL)
        else:
            for digest in hashes:
                done.append_leaf(digest)
        self.room = _CHUNK - done.end % _CHUNK

    def copy(self) -> CompactRange:
        snapshot = self.done.copy()
        for leaf in self.pending:
            snapshot.append_leaf(leaf_hash(leaf))
        return snapshot

    def extend(self, other: CompactRange) -> None:
        self.settle()
        self.done.extend(other)
        self.room = _CHUNK - self.done.end % _CHUNK


# --- C2SP signed-note (as golang.org/x/mod/sumdb/note) -------------------------------------------

NOTE_ALG_ED25519 = 0x01
NOTE_SIG_PREFIX = "— "  # U+2014 EM DASH, then a space
NOTE_MAX_SIGNATURES = 100


class NoteError(ValueError):
    """A signed note or checkpoint that cannot be trusted; `kind` says why in one word."""

    kind = "malformed"


class MalformedNote(NoteError):
    kind = "malformed"


class UnknownKey(NoteError):
    kind = "unknown key"


class BadSignature(NoteError):
    kind = "bad signature"


class MalformedCheckpoint(NoteError):
    kind = "malformed checkpoint"


class MalformedKey(ValueError):
    """A verifier key (vkey) that is not name+<8 hex>+<base64 of 0x01 ‖ 32-byte Ed25519 key>."""


def _ed25519():
    try:
        from cryptography.hazmat.primitives.asymmetric import ed25519
    except ImportError:
        raise ImportError("Ed25519 signatures need the 'cryptography' package (pip install cryptography)") from None
    return ed25519


def _b64decode_exact(text: str) -> bytes | None:
    """Standard base64 with padding, only in its canonical spelling; None when it is not."""
    try:
        raw = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        return None
    return raw if base64.b64encode(raw).decode("ascii") == text else None


def _valid_key_name(name: str) -> bool:
    return bool(name) and "+" not in name and not any(ch.isspace() for ch in name)


def _valid_note_text(text: str) -> bool:
    return not any(ch < " " and ch != "\n" for ch in text)


def note_key_id(name: str, public_key: bytes) -> bytes:
    """The 4-byte key id: the start of SHA-256(name ‖ "\\n" ‖ 0x01 ‖ public key)."""
    return hashlib.sha256(name.encode("utf-8") + b"\n" + bytes([NOTE_ALG_ED25519]) + public_key).digest()[:4]


def note_vkey(name: str, public_key_bytes: bytes) -> str:
    """The verifier key text `name+<8 hex key id>+<base64(0x01 ‖ public key)>`."""
    if not _valid_key_name(name):
        raise MalformedKey(f"{name!r} cannot name a key: it must be non-empty, without spaces or '+'")
    if len(public_key_bytes) != 32:
        raise MalformedKey(f"an Ed25519 public key is 32 bytes, not {len(public_key_bytes)}")
    encoded = base64.b64encode(bytes([NOTE_ALG_ED25519]) + public_key_bytes).decode("ascii")
    return f"{name}+{note_key_id(name, public_key_bytes).hex()}+{encoded}"


@dataclass(frozen=True)
class NoteVerifier:
    name: str
    key_id: bytes
    public_key: bytes

    @property
    def label(self) -> str:
        """name+hexid, as error messages name a key."""
        return f"{self.name}+{self.key_id.hex()}"

    @property
    def vkey(self) -> str:
        return note_vkey(self.name, self.public_key)


def parse_vkey(vkey: str) -> NoteVerifier:
    """The verifier a vkey names, checked strictly (its id must be the hash of its name and key)."""
    name, _, rest = vkey.partition("+")
    hex_id, _, encoded = rest.partition("+")
    if not _valid_key_name(name) or not re.fullmatch(r"[0-9a-f]{8}", hex_id):
        raise MalformedKey(f"not a verifier key (name+<8 hex>+<base64 key>): {vkey!r}")
    raw = _b64decode_exact(encoded)
    if raw is None or len(raw) != 33 or raw[0] != NOTE_ALG_ED25519:
        raise MalformedKey(f"verifier key {name}+{hex_id} does not hold an Ed25519 public key")
    verifier = NoteVerifier(name, bytes.fromhex(hex_id), raw[1:])
    if note_key_id(name, verifier.public_key) != verifier.key_id:
        raise MalformedKey(f"verifier key {name}+{hex_id}: its id is not the hash of its name and key")
    return verifier


def ed25519_public_key(private_key: bytes) -> bytes:
    """The 32-byte public key of a 32-byte Ed25519 private key (seed)."""
    return _raw_public_key(_ed25519().Ed25519PrivateKey.from_private_bytes(private_key))


def _raw_public_key(private_key) -> bytes:
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat  # where _ed25519() found it

    return private_key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)


def sign_note(text: str, name: str, private_key: bytes) -> str:
    """The note: `text` (ending in a newline), a blank line, then `— <name> <base64(key id ‖ Ed25519
    signature of text)>`. `private_key` is the 32-byte Ed25519 seed."""
    if not text.endswith("\n") or not _valid_note_text(text):
        raise MalformedNote("a note's text must end with a newline and hold no control characters but newlines")
    if not _valid_key_name(name):
        raise MalformedKey(f"{name!r} cannot name a key: it must be non-empty, without spaces or '+'")
    key = _ed25519().Ed25519PrivateKey.from_private_bytes(private_key)
    key_id = note_key_id(name, _raw_public_key(key))
    signature = base64.b64encode(key_id + key.sign(text.encode("utf-8"))).decode("ascii")
    return f"{text}\n{NOTE_SIG_PREFIX}{name} {signature}\n"


def split_note(note: str | bytes) -> tuple[str, list[tuple[str, bytes, bytes]]]:
    """The note's text and its signatures as (name, key id, signature), unchecked. MalformedNote
    when it is not a signed note."""
    if isinstance(note, bytes):
        try:
            note = note.decode("utf-8")
        except UnicodeDecodeError:
            raise MalformedNote("malformed note: not UTF-8") from None
    if not _valid_note_text(note):
        raise MalformedNote("malformed note: it holds control characters")
    split = note.rfind("\n\n")
    if split < 0:
        raise MalformedNote("malformed note: no blank line before its signatures")
    text, block = note[:split + 1], note[split + 2:]
    if not block.endswith("\n"):
        raise MalformedNote("malformed note: its signature block does not end with a newline")
    signatures = []
    for line in block[:-1].split("\n"):
        if not line.startswith(NOTE_SIG_PREFIX):
            raise MalformedNote(f"malformed note: {line[:40]!r} is not a signature line (— <name> <base64>)")
        name, _, encoded = line[len(NOTE_SIG_PREFIX):].partition(" ")
        raw = _b64decode_exact(encoded)
        if not _valid_key_name(name) or raw is None or len(raw) < 5:
            raise MalformedNote(f"malformed note: bad signature line {line[:40]!r}…")
        signatures.append((name, raw[:4], raw[4:]))
        if len(signatures) > NOTE_MAX_SIGNATURES:
            raise MalformedNote(f"malformed note: more than {NOTE_MAX_SIGNATURES} signatures")
    return text, signatures


def open_note(note: str | bytes, vkey: str | NoteVerifier) -> str:
    """The note's text once its signature by `vkey`'s key is checked. Raises MalformedNote,
    UnknownKey (not signed by that key: the keys that did sign are named) or BadSignature; a
    malformed vkey raises MalformedKey."""
    verifier = vkey if isinstance(vkey, NoteVerifier) else parse_vkey(vkey)
    text, signatures = split_note(note)
    others = []
    for name, key_id, signature in signatures:
        if (name, key_id) != (verifier.name, verifier.key_id):
            others.append(f"{name}+{key_id.hex()}")
            continue
        public = _ed25519().Ed25519PublicKey.from_public_bytes(verifier.public_key)
        try:
            if len(signature) != 64:
                raise ValueError
            public.verify(signature, text.encode("utf-8"))
        except Exception:  # cryptography's InvalidSignature, or a signature of the wrong length
            raise BadSignature(f"invalid signature for key {verifier.label}") from None
        return text
    raise UnknownKey(f"not signed by key {verifier.label}: signed by " + (", ".join(others) or "no key"))


# --- C2SP tlog-checkpoint -------------------------------------------------------------------------

_DECIMAL = re.compile(r"0|[1-9][0-9]{0,19}")


def checkpoint_body(origin: str, size: int, root: bytes, extensions: Iterable[str] = ()) -> str:
    """`<origin>\\n<tree size>\\n<base64 root hash>\\n` then any extension lines: a checkpoint's text."""
    lines = [origin, str(size), base64.b64encode(root).decode("ascii"), *extensions]
    if (not origin or not _valid_note_text(origin) or "\n" in origin or size < 0 or len(root) != HASH_SIZE
            or any(not line or "\n" in line or not _valid_note_text(line) for line in lines[3:])):
        raise MalformedCheckpoint("a checkpoint needs an origin line, a size ≥ 0, a 32-byte root and "
                                  "non-empty extension lines")
    return "".join(f"{line}\n" for line in lines)


def parse_checkpoint(text: str) -> tuple[str, int, bytes]:
    """(origin, tree size, root hash) of a checkpoint's text, strictly: three lines at least, a
    non-empty origin, a decimal size without leading zeros, the root in canonical base64 of 32 bytes,
    non-empty extension lines, a final newline."""
    if not text.endswith("\n"):
        raise MalformedCheckpoint("malformed checkpoint: it does not end with a newline")
    lines = text[:-1].split("\n")
    if len(lines) < 3:
        raise MalformedCheckpoint("malformed checkpoint: it needs an origin, a tree size and a root hash line")
    origin, size, root = lines[:3]
    if not origin or not _valid_note_text(origin):
        raise MalformedCheckpoint("malformed checkpoint: empty origin line")
    if not _DECIMAL.fullmatch(size) or int(size) >= 1 << 64:
        raise MalformedCheckpoint(f"malformed checkpoint: tree size {size[:24]!r} is not a decimal number")
    raw = _b64decode_exact(root)
    if raw is None or len(raw) != HASH_SIZE:
        raise MalformedCheckpoint("malformed checkpoint: the root hash is not base64 of 32 bytes")
    if any(not line for line in lines[3:]):
        raise MalformedCheckpoint("malformed checkpoint: an empty extension line")
    return origin, int(size), raw


def open_checkpoint(note: str | bytes, vkey: str | NoteVerifier) -> tuple[str, int, bytes]:
    """(origin, tree size, root) of a signed checkpoint note, its signature by `vkey` checked."""
    return parse_checkpoint(open_note(note, vkey))



# --- offline checks with the public key: an export's tree heads, a bundle's proofs, two checkpoints ----

def _joined(before: CompactRange | _Leaves, after: CompactRange) -> CompactRange:
    joined = before.copy()
    joined.extend(after)
    return joined


def _roots_at(path: str, walk: _Walk, heads: list[TlogCheckpoint]) -> dict[int, bytes]:
    """The Merkle root of the export's first n events for each size n a tree head names. Most were
    kept as the walk passed them; a head naming an earlier event than the one before it is served
    by a second read of the file, only then."""
    sizes = {cp.size for cp in heads if cp.size is not None and 0 < cp.size <= walk.report.head_seq}
    missing = sizes - walk.marks.keys()
    if missing:
        again = _Walk(Report(), set(missing), stop_at_first=True)
        again.tree = _Leaves()
        with open(path, "rb") as fh:
            _walk_export(fh, again, [], 0, 0)
        walk.marks.update(again.marks)
    roots = {size: walk.marks[size].root() for size in sizes if size in walk.marks}
    roots[0] = EMPTY_ROOT
    return roots


def _check_tree_heads(report: Report, heads: list[TlogCheckpoint], roots: dict[int, bytes],
                      verifier: NoteVerifier) -> None:
    """Each tree head's signature, then its root against the events' Merkle root at its size. The
    heads that match bound where a rewrite begins: after the largest matching one below a head
    that does not (the signed prefix is proved), at or before that head."""
    opened = []
    for cp in heads:
        try:
            origin, size, root = open_checkpoint(cp.note, verifier)
        except UnknownKey as exc:
            report.fail(None, f"{cp.where} is signed by another key ({exc}).")
        except BadSignature as exc:
            report.fail(None, f"{cp.where} has an invalid signature ({exc}): it was altered or forged.")
        except NoteError as exc:
            report.fail(None, f"{cp.where} is not a signed checkpoint ({exc}).")
        else:
            opened.append((size, cp, origin, root))
    opened.sort(key=lambda head: head[0])
    matching = [size for size, _, _, root in opened if size <= report.head_seq and roots.get(size) == root]
    for size, cp, origin, root in opened:
        if size > report.head_seq:
            report.fail(report.head_seq + 1,
                        f"the log ends at #{report.head_seq} but {cp.where} ({origin}) signs a tree of {size} "
                        f"events: events #{report.head_seq + 1}…#{size} were removed (detected by checkpoint).")
        elif roots.get(size) != root:
            good = max((m for m in matching if m < size), default=0)
            later = [m for m in matching if m > size]
            fork = (f"; yet the signed tree of {later[0]} events matches them: the log signed two trees that "
                    "are not consistent (a fork)" if later else "")
            report.fail(size, f"events #1…#{size} do not have the Merkle root {cp.where} ({origin}, tree size "
                              f"{size}) signs: the log was rewritten from an event in #{good + 1}…#{size} on "
                              f"(leaves {good}…{size - 1}; detected by checkpoint){fork}.")
        else:
            report.tree_heads += 1


def load_vkey(value: str) -> NoteVerifier:
    """--public-key: a vkey, or a file holding one (as text, or the JSON of GET /api/v1/audit/public-key)."""
    text = value
    if os.path.isfile(value):
        with open(value, encoding="utf-8") as fh:
            text = fh.read().strip()
        if text.startswith("{"):
            try:
                text = json.loads(text)["vkey"]
            except (ValueError, KeyError, TypeError):
                raise UnusableInput(f"{value}: not a public key (JSON without a \"vkey\").") from None
    try:
        return parse_vkey(str(text).strip())
    except MalformedKey as exc:
        raise UnusableInput(f"--public-key: {exc}") from None


def _proof_hashes(encoded: object) -> list[bytes] | None:
    if not isinstance(encoded, list) or not all(isinstance(item, str) for item in encoded):
        return None
    hashes = [_b64decode_exact(item) for item in encoded]
    return hashes if all(h is not None and len(h) == HASH_SIZE for h in hashes) else None


def _whole_number(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def verify_bundle(bundle: object, verifier: NoteVerifier) -> Report:
    """An evidence bundle's audit part: its signed checkpoint note, then every event proved
    included in that tree (leaf = the event's canonical bytes, index = seq - 1)."""
    part = bundle.get("audit") if isinstance(bundle, dict) else None
    if not isinstance(part, dict):
        raise UnusableInput("not an evidence bundle: it has no \"audit\" part.")
    note, events, proofs = part.get("checkpoint_note"), part.get("events"), part.get("proofs")
    if not isinstance(note, str) or not note:
        raise UnusableInput("this evidence bundle carries no signed checkpoint note (audit.checkpoint_note): "
                            "it was made before bundles carried Merkle proofs.")
    if not isinstance(events, list) or not isinstance(proofs, list):
        raise UnusableInput("this evidence bundle's audit part lacks \"events\" or \"proofs\".")
    report = Report()
    try:
        origin, size, root = open_checkpoint(note, verifier)
    except UnknownKey as exc:
        report.fail(None, f"the bundle's checkpoint note is signed by another key ({exc}).")
        return report
    except BadSignature as exc:
        report.fail(None, f"the bundle's checkpoint note has an invalid signature ({exc}): it was altered or forged.")
        return report
    except NoteError as exc:
        report.fail(None, f"the bundle's checkpoint note is not a signed checkpoint ({exc}).")
        return report
    by_seq: dict[int, dict] = {}
    for proof in proofs:
        seq = proof.get("seq") if isinstance(proof, dict) else None
        if not _whole_number(seq):
            report.fail(None, f"a proof of the bundle names no event: {str(proof)[:80]}")
        elif seq in by_seq:
            report.fail(seq, f"the bundle holds two proofs for event #{seq}.")
        else:
            by_seq[seq] = proof
    listed = []
    for entry in events:
        seq = entry.get("seq") if isinstance(entry, dict) else None
        if not _whole_number(seq) or seq < 1:
            report.fail(None, f"an event of the bundle has no seq: {str(entry)[:80]}")
        else:
            listed.append((seq, entry))
    listed.sort(key=lambda item: item[0])
    newer = []
    for seq, entry in listed:
        if seq > size and seq not in by_seq:  # sequenced after the checkpoint the bundle carries
            newer.append(seq)
            continue
        problem = _bundle_event_problem(seq, entry, by_seq.get(seq), size, root, origin)
        if problem:
            report.fail(seq, problem)
        else:
            report.events += 1
            report.head_seq = max(report.head_seq, seq)
    report.ok_line = (f"OK: {report.events} event(s) of the bundle proved included in the signed tree of {size} "
                      f"events ({origin}, key {verifier.label}).")
    if newer:
        report.notes.append(f"{len(newer)} event(s) newer than the bundle's signed checkpoint (tree of {size}) are "
                            f"not proved: #{', #'.join(map(str, newer[:10]))}{' …' if len(newer) > 10 else ''}; "
                            "a bundle made after the next checkpoint proves them.")
    named = part.get("public_key")
    if isinstance(named, str) and named != verifier.vkey:
        report.notes.append(f"the bundle names the public key {named}; it was verified with {verifier.vkey}.")
    return report


def _bundle_event_problem(seq: int, entry: dict, proof: dict | None, size: int, root: bytes,
                          origin: str) -> str | None:
    canonical = entry.get("canonical")
    if canonical is None and isinstance(entry.get("event"), dict):
        canonical = canonical_json(entry["event"])
    if not isinstance(canonical, str):
        return f"event #{seq} carries no canonical contents."
    if "event" in entry:
        try:
            shown_differs = json.loads(canonical) != entry["event"]
        except ValueError:
            shown_differs = True
        if shown_differs:
            return f"event #{seq}'s fields shown in the bundle differ from its canonical contents."
    inner = _inner_seq(canonical)
    if inner is not None and inner != seq:
        return f"event #{seq} carries seq {inner} inside its canonical contents."
    if isinstance(entry.get("prev_hash"), str) and isinstance(entry.get("hash"), str):
        try:
            linked = chain_hash(entry["prev_hash"], canonical) == entry["hash"]
        except ValueError:
            linked = False
        if not linked:
            return f"event #{seq}'s contents do not match its chain hash (the event was altered)."
    if proof is None:
        return f"event #{seq} has no inclusion proof in the bundle."
    index, tree_size, hashes = proof.get("index"), proof.get("tree_size"), _proof_hashes(proof.get("proof"))
    if index != seq - 1:
        return f"event #{seq}'s proof is for leaf {index!r}, not leaf {seq - 1} (leaf index = seq - 1)."
    if tree_size != size:
        return f"event #{seq}'s proof is for a tree of {tree_size!r} events, not the {size} the checkpoint signs."
    if hashes is None:
        return f"event #{seq}'s proof is not a list of base64 SHA-256 hashes."
    if not verify_inclusion(leaf_hash(canonical.encode("utf-8")), index, size, hashes, root):
        return (f"event #{seq} is not proved included in the signed tree of {size} events ({origin}): its "
                "contents or its proof were altered.")
    return None


def verify_checkpoint_consistency(old_note: str, new_note: str, proof: object, verifier: NoteVerifier) -> Report:
    """Two signed checkpoints and the consistency proof between them (what GET
    /api/v1/audit/proof/consistency answers): does the newer tree extend the older one?"""
    report, opened = Report(), []
    for label, note in (("the old checkpoint", old_note), ("the new checkpoint", new_note)):
        try:
            opened.append(open_checkpoint(note, verifier))
        except UnknownKey as exc:
            report.fail(None, f"{label} is signed by another key ({exc}).")
        except BadSignature as exc:
            report.fail(None, f"{label} has an invalid signature ({exc}): it was altered or forged.")
        except NoteError as exc:
            report.fail(None, f"{label} is not a signed checkpoint ({exc}).")
    if not report.ok:
        return report
    (old_origin, first, first_root), (new_origin, second, second_root) = opened
    if old_origin != new_origin:
        raise UnusableInput(f"the checkpoints are of two logs ({old_origin!r} and {new_origin!r}).")
    if first > second:
        raise UnusableInput(f"the old checkpoint ({first} events) is larger than the new one ({second}): give the "
                            "older first.")
    if not isinstance(proof, dict) or (proof.get("first"), proof.get("second")) != (first, second):
        shown = (proof.get("first"), proof.get("second")) if isinstance(proof, dict) else proof
        raise UnusableInput(f"the proof is not for sizes {first} → {second} (it names {shown!r}).")
    hashes = _proof_hashes(proof.get("proof"))
    if hashes is None:
        raise UnusableInput("the proof's \"proof\" is not a list of base64 SHA-256 hashes.")
    if first == second and first_root != second_root:
        report.fail(None, f"the log forked: two signed checkpoints of {first} events ({old_origin}) have different "
                          "roots.")
    elif not verify_consistency(first, second, first_root, second_root, hashes):
        report.fail(None, f"the log forked: the signed tree of {second} events ({new_origin}) does not extend the "
                          f"signed tree of {first} events by the consistency proof given (the two checkpoints are "
                          "not consistent, or the proof was altered).")
    report.ok_line = (f"OK: the signed tree of {second} events extends the signed tree of {first} events "
                      f"({new_origin}, key {verifier.label}).")
    return report


def _read_json(path: str) -> object:
    with open(path, encoding="utf-8") as fh:
        try:
            return json.load(fh)
        except RecursionError:
            raise UnusableInput(f"{path}: JSON nested too deeply.") from None
        except ValueError as exc:
            raise UnusableInput(f"{path}: not JSON ({exc}).") from None


def _read_note(path: str) -> str:
    with open(path, encoding="utf-8", newline="") as fh:
        return fh.read()


def _read_checkpoint_file(path: str) -> tuple[list[Checkpoint], list[TlogCheckpoint]]:
    with open(path, encoding="utf-8") as fh:
        checkpoints = export_checkpoints(fh)
    with open(path, encoding="utf-8") as fh:
        heads = export_tlog_checkpoints(fh)
    for head in heads:
        head.source = "checkpoints file"
    return checkpoints, heads


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Verify a Ringfence audit export, an evidence bundle's inclusion "
                                                 "proofs, or two signed checkpoints, offline.")
    parser.add_argument("export", nargs="?", help="JSON Lines export file")
    parser.add_argument("--key", help="checkpoint HMAC key (or AUDIT_CHECKPOINT_KEY in the environment)")
    parser.add_argument("--key-file", help="file holding the checkpoint key")
    parser.add_argument("--checkpoints", help="extra checkpoint file (JSON Lines) shipped outside the database")
    parser.add_argument("--workers", type=int, default=default_workers(),
                        help="processes that check a large export side by side (default: one per core, at most 8)")
    parser.add_argument("--public-key", metavar="VKEY_OR_FILE",
                        help="the log's public key (name+id+key, or a file holding it): checks tlog checkpoints "
                             "(signed notes) and their Merkle roots")
    parser.add_argument("--bundle", metavar="FILE.json",
                        help="verify an evidence bundle: every event proved included in its signed checkpoint")
    parser.add_argument("--consistency", nargs=3, metavar=("OLD_NOTE", "NEW_NOTE", "PROOF_JSON"),
                        help="verify that the newer signed checkpoint extends the older one (a fork is named)")
    args = parser.parse_args(argv)
    if sum(map(bool, (args.export, args.bundle, args.consistency))) != 1:
        parser.error("give one of: an export file, --bundle FILE.json, --consistency OLD_NOTE NEW_NOTE PROOF_JSON")
    if (args.bundle or args.consistency) and not args.public_key:
        parser.error("--bundle and --consistency need --public-key")
    key = args.key or os.environ.get("AUDIT_CHECKPOINT_KEY")
    try:
        if args.key_file:
            with open(args.key_file, encoding="utf-8") as fh:
                key = fh.read().strip()
        verifier = load_vkey(args.public_key) if args.public_key else None
        if args.bundle:
            report = verify_bundle(_read_json(args.bundle), verifier)
        elif args.consistency:
            old, new, proof = args.consistency
            report = verify_checkpoint_consistency(_read_note(old), _read_note(new), _read_json(proof), verifier)
        else:
            extra, heads = _read_checkpoint_file(args.checkpoints) if args.checkpoints else ([], [])
            report = verify_export(args.export, key, extra, workers=max(args.workers, 1), public_key=verifier,
                                   extra_heads=heads)
    except OSError as exc:
        print(f"cannot read input: {exc}", file=sys.stderr)
        return 2
    except UnicodeDecodeError as exc:
        print(f"cannot read input: not UTF-8 text ({exc})", file=sys.stderr)
        return 2
    except (UnusableInput, ImportError) as exc:
        print(exc, file=sys.stderr)
        return 2
    except (RecursionError, MemoryError, OverflowError, ValueError, TypeError) as exc:
        # Input no check above foresaw: still unusable input, named, never a traceback.
        print(f"cannot verify this input: {type(exc).__name__}: {str(exc)[:300]}", file=sys.stderr)
        return 2
    print(report.summary())
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
