"""The standalone verifier (audit/verify_audit.py, copied elsewhere and run as its own program)
with the log's public key: the signed tree heads (C2SP tlog checkpoints as Ed25519 signed notes) in
an export are checked against the Merkle root of its events, an evidence bundle's events against
their inclusion proofs, and two checkpoints against a consistency proof. Exit 0 intact, 1 broken
(the first broken thing named), 2 unusable input.

The export is built here in the exporter's exact layout (audit.export_line), 3,000 events with a
tree head after events #1000, #2000 and #3000 and an HMAC checkpoint after #3000, as an export of
the sequenced log carries them; no database is needed.
"""

from __future__ import annotations

import base64
import json
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from audit import log as audit
from audit.verify_audit import (
    FORMAT_VERSION,
    GENESIS,
    MerkleTree,
    canonical_json,
    chain_hash,
    checkpoint_body,
    ed25519_public_key,
    note_vkey,
    sign_checkpoint,
    sign_note,
    verify_export,
)

SCRIPT = Path(audit.__file__).resolve().parent / "verify_audit.py"
EVENTS = 3_000
HEADS_AT = (1_000, 2_000, 3_000)
ORIGIN = "ringfence.test/audit"
SEED = bytes(range(1, 33))
OTHER_SEED = bytes(range(101, 133))
HMAC_KEY = "test-checkpoint-key-" + "h" * 40
VKEY = note_vkey(ORIGIN, ed25519_public_key(SEED))
OTHER_VKEY = note_vkey("someone.else/log", ed25519_public_key(OTHER_SEED))
# Run the copied script as if `cryptography` were not installed.
WITHOUT_CRYPTOGRAPHY = ("import runpy, sys; sys.modules['cryptography'] = None; script = sys.argv[1]; "
                        "sys.argv = sys.argv[1:]; runpy.run_path(script, run_name='__main__')")


def payload(seq: int, **changes) -> dict:
    return {"v": FORMAT_VERSION, "seq": seq, "at": f"2026-03-02T09:{seq // 60 % 60:02d}:{seq % 60:02d}.000000Z",
            "actor": {"kind": "service", "id": "7", "label": "refund-bot"}, "action": "approvals.decided",
            "subject": {"type": "approvals.request", "id": str(seq)}, "workflow": "refund-agent",
            "data": {"verdict": "approve", "amount": "120.50", "note": "Rückerstattung ✓\u2028zweite Zeile"},
            "reason": "", **changes}


def chained(canonicals: list[str]) -> list[tuple[int, str, str, str]]:
    rows, prev = [], GENESIS
    for seq, canonical in enumerate(canonicals, 1):
        event_hash = chain_hash(prev, canonical)
        rows.append((seq, prev, event_hash, canonical))
        prev = event_hash
    return rows


def tree_of(canonicals: list[str]) -> MerkleTree:
    return MerkleTree.of_leaves(c.encode("utf-8") for c in canonicals)


def head_note(tree: MerkleTree, size: int, seed: bytes = SEED, name: str = ORIGIN) -> str:
    return sign_note(checkpoint_body(ORIGIN, size, tree.root(size)), name, seed)


def head_line(note: str) -> str:
    return json.dumps({"type": "tlog_checkpoint", "note": note}, ensure_ascii=False)


def hmac_line(seq: int, event_hash: str) -> str:
    at = "2026-03-02T10:00:00.000000Z"
    return json.dumps({"type": "checkpoint", "seq": seq, "hash": event_hash, "at": at,
                       "signature": sign_checkpoint(HMAC_KEY, seq, event_hash, at)}, sort_keys=True)


def export_of(rows, notes: dict[int, str], *, hmac_at: int | None = EVENTS) -> list[str]:
    """The export's lines: each event, each tree head right after the event it ends on."""
    lines = []
    for row in rows:
        lines.append(audit.export_line(row))
        if row[0] in notes:
            lines.append(head_line(notes[row[0]]))
        if row[0] == hmac_at:
            lines.append(hmac_line(row[0], row[2]))
    return lines


@dataclass
class Log:
    canonicals: list[str]
    rows: list[tuple[int, str, str, str]]
    tree: MerkleTree
    notes: dict[int, str]
    lines: list[str]


@pytest.fixture(scope="module")
def log() -> Log:
    canonicals = [canonical_json(payload(seq)) for seq in range(1, EVENTS + 1)]
    rows, tree = chained(canonicals), tree_of(canonicals)
    notes = {size: head_note(tree, size) for size in HEADS_AT}
    return Log(canonicals, rows, tree, notes, export_of(rows, notes))


@pytest.fixture
def run(tmp_path):
    script = shutil.copy(SCRIPT, tmp_path / "verify_audit.py")  # "copy this one file anywhere"

    def run(*args: str, without_cryptography: bool = False) -> subprocess.CompletedProcess:
        command = [sys.executable, "-c", WITHOUT_CRYPTOGRAPHY] if without_cryptography else [sys.executable]
        return subprocess.run([*command, str(script), *map(str, args)], capture_output=True, text=True, timeout=120,
                              cwd=tmp_path, env={"PATH": "/usr/bin:/bin"})
    return run


def write(tmp_path: Path, name: str, lines: list[str]) -> Path:
    path = tmp_path / name
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


def rewritten_from(log: Log, k: int) -> list[str]:
    """Event k changed and every later link recomputed: a consistent chain, as an owner with database
    access could write it; the tree heads stay as they were signed."""
    canonicals = list(log.canonicals)
    canonicals[k - 1] = canonical_json(payload(k, reason="approved by the on-call lead"))
    return export_of(chained(canonicals), log.notes)


# --- exports --------------------------------------------------------------------------------------

def test_an_intact_export_verifies_every_tree_head_and_the_hmac_checkpoint(log, run, tmp_path):
    export = write(tmp_path, "intact.jsonl", log.lines)
    key_file = tmp_path / "checkpoint.key"
    key_file.write_text(HMAC_KEY)
    (tmp_path / "vkey.txt").write_text(VKEY + "\n")
    (tmp_path / "public-key.json").write_text(json.dumps({"name": ORIGIN, "vkey": VKEY}))
    for public_key in (VKEY, tmp_path / "vkey.txt", tmp_path / "public-key.json"):
        result = run(export, "--key-file", key_file, "--public-key", public_key)
        assert result.returncode == 0, result.stdout + result.stderr
        assert result.stdout.startswith(f"OK: {EVENTS} events") and "1 checkpoint(s) verified" in result.stdout
        assert f"{len(HEADS_AT)} signed tree head(s) verified" in result.stdout


def test_without_the_public_key_the_tree_heads_are_named_unchecked(log, run, tmp_path):
    result = run(write(tmp_path, "intact.jsonl", log.lines))
    assert result.returncode == 0, result.stdout
    assert f"no public key given: {len(HEADS_AT)} tlog checkpoint(s)" in result.stdout


@pytest.mark.parametrize("k, good, head", [(2_500, 2_000, 3_000), (1, 0, 1_000), (1_000, 0, 1_000),
                                           (1_001, 1_000, 2_000)])
def test_a_rewritten_chain_is_caught_by_the_tree_head_naming_the_leaves_that_disagree(log, run, tmp_path, k, good,
                                                                                        head):
    """The chain links are recomputed, so only the signed roots see it: the first head that does
    not match is named, with the range between the last matching head and it."""
    result = run(write(tmp_path, f"rewritten-{k}.jsonl", rewritten_from(log, k)), "--public-key", VKEY)
    assert result.returncode == 1, result.stdout
    assert result.stdout.startswith(f"BROKEN at event #{head}:"), result.stdout
    assert f"tlog checkpoint on line {log.lines.index(head_line(log.notes[head])) + 1} of the export" in result.stdout
    first, last = map(int, re.search(r"rewritten from an event in #(\d+)…#(\d+) on", result.stdout).groups())
    assert (first, last) == (good + 1, head) and first <= k <= last
    assert "detected by checkpoint" in result.stdout
    # without the key the rewrite goes unseen: the chain itself is consistent
    assert run(write(tmp_path, f"rewritten-{k}-nokey.jsonl", rewritten_from(log, k))).returncode == 0


def test_a_removed_tail_is_caught_by_the_newest_tree_head(log, run, tmp_path):
    lines = [line for line in log.lines if not line.startswith('{"type":"event"') or
             json.loads(line)["seq"] <= 2_900]
    result = run(write(tmp_path, "truncated.jsonl", lines), "--public-key", VKEY)
    assert result.returncode == 1
    assert "BROKEN at event #2901" in result.stdout and "events #2901…#3000 were removed" in result.stdout


def test_a_tree_head_signed_by_another_key_is_named(log, run, tmp_path):
    lines = list(log.lines)
    at = lines.index(head_line(log.notes[2_000]))
    lines[at] = head_line(head_note(log.tree, 2_000, OTHER_SEED, "someone.else/log"))
    result = run(write(tmp_path, "other-key.jsonl", lines), "--public-key", VKEY)
    assert result.returncode == 1
    assert f"tlog checkpoint on line {at + 1} of the export is signed by another key" in result.stdout
    assert "someone.else/log+" in result.stdout and "+".join(VKEY.split("+")[:2]) in result.stdout
    # and the export checked with that other key names every head it did not sign
    result = run(write(tmp_path, "intact.jsonl", log.lines), "--public-key", OTHER_VKEY)
    assert result.returncode == 1 and result.stdout.count("signed by another key") == 3


def test_an_altered_tree_head_has_an_invalid_signature(log, run, tmp_path):
    lines = list(log.lines)
    at = lines.index(head_line(log.notes[3_000]))
    lines[at] = head_line(log.notes[3_000].replace(f"\n{EVENTS}\n", f"\n{EVENTS - 1}\n"))
    result = run(write(tmp_path, "altered-head.jsonl", lines), "--public-key", VKEY)
    assert result.returncode == 1 and f"line {at + 1} of the export has an invalid signature" in result.stdout


def test_a_fork_shows_as_a_signed_head_the_later_one_contradicts(log, run, tmp_path):
    """The log signed a tree of 2,000 events that the tree of 3,000 it also signed does not extend."""
    forked = list(log.canonicals)
    forked[1_499] = canonical_json(payload(1_500, reason="the other history"))
    notes = {**log.notes, 2_000: head_note(tree_of(forked), 2_000)}
    result = run(write(tmp_path, "fork.jsonl", export_of(log.rows, notes)), "--public-key", VKEY)
    assert result.returncode == 1
    assert "BROKEN at event #2000" in result.stdout and "#1001…#2000" in result.stdout
    assert "not consistent (a fork)" in result.stdout


def test_tree_heads_anywhere_in_the_file_or_shipped_beside_it_verify_the_same(log, run, tmp_path):
    at_the_end = ([line for line in log.lines if '"tlog_checkpoint"' not in line]
                  + [head_line(log.notes[size]) for size in HEADS_AT])
    result = run(write(tmp_path, "heads-at-end.jsonl", at_the_end), "--public-key", VKEY)
    assert result.returncode == 0 and f"{len(HEADS_AT)} signed tree head(s) verified" in result.stdout, result.stdout

    bare = [line for line in log.lines if '"tlog_checkpoint"' not in line]
    shipped = write(tmp_path, "heads.jsonl", [head_line(log.notes[size]) for size in HEADS_AT])
    result = run(write(tmp_path, "bare.jsonl", bare), "--public-key", VKEY, "--checkpoints", shipped)
    assert result.returncode == 0 and f"{len(HEADS_AT)} signed tree head(s) verified" in result.stdout, result.stdout
    rewritten = [line for line in rewritten_from(log, 2_222) if '"tlog_checkpoint"' not in line]
    result = run(write(tmp_path, "bare-rewritten.jsonl", rewritten), "--public-key", VKEY, "--checkpoints", shipped)
    assert result.returncode == 1 and "tlog checkpoint on line 3 of the checkpoints file" in result.stdout


def test_processes_checking_stretches_reach_the_verdict_of_one_walk(log, tmp_path):
    """Stretches checked side by side carry their leaves to the walk: the same roots, the same verdict."""
    cases = {"intact": log.lines, "rewritten": rewritten_from(log, 1_777),
             "heads-at-end": [line for line in log.lines if '"tlog_checkpoint"' not in line]
             + [head_line(log.notes[size]) for size in HEADS_AT]}
    for name, lines in cases.items():
        path = str(write(tmp_path, f"{name}.jsonl", lines))
        alone = verify_export(path, HMAC_KEY, public_key=VKEY).summary()
        for workers in (2, 3, 5):
            assert verify_export(path, HMAC_KEY, public_key=VKEY, workers=workers, min_stretch=1).summary() == alone
        assert alone.startswith("BROKEN at event #2000" if name == "rewritten" else f"OK: {EVENTS} events"), alone


def test_the_chain_checks_need_no_cryptography_and_the_public_key_says_what_it_needs(log, run, tmp_path):
    export = write(tmp_path, "intact.jsonl", log.lines)
    result = run(export, "--key", HMAC_KEY, without_cryptography=True)
    assert result.returncode == 0 and result.stdout.startswith(f"OK: {EVENTS} events"), result.stdout + result.stderr
    result = run(export, "--public-key", VKEY, without_cryptography=True)
    assert result.returncode == 2 and "cryptography" in result.stderr


def test_a_malformed_public_key_is_unusable_input(log, run, tmp_path):
    export = write(tmp_path, "intact.jsonl", log.lines)
    for bad in ("not-a-key", VKEY[:-2], VKEY.replace("+", "-", 1)):
        result = run(export, "--public-key", bad)
        assert result.returncode == 2 and "--public-key" in result.stderr, (bad, result.stderr)


# --- evidence bundles -----------------------------------------------------------------------------

def bundle_of(log: Log, seqs: tuple[int, ...] = (7, 1_234, 2_999), size: int = EVENTS) -> dict:
    events = [{"seq": seq, "canonical": log.canonicals[seq - 1], "event": json.loads(log.canonicals[seq - 1]),
               "prev_hash": log.rows[seq - 1][1], "hash": log.rows[seq - 1][2]} for seq in seqs]
    proofs = [{"seq": seq, "index": seq - 1, "tree_size": size,
               "proof": [base64.b64encode(h).decode() for h in log.tree.inclusion_proof(seq - 1, size)]}
              for seq in seqs]
    return {"request": {"id": 7}, "audit": {"events": events, "proofs": proofs,
                                            "checkpoint_note": head_note(log.tree, size)}}


def test_a_bundles_events_are_each_proved_included(log, run, tmp_path):
    path = tmp_path / "bundle.json"
    path.write_text(json.dumps(bundle_of(log), ensure_ascii=False, indent=2))
    result = run("--bundle", path, "--public-key", VKEY)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.startswith(f"OK: 3 event(s) of the bundle proved included in the signed tree of {EVENTS}")


def test_events_newer_than_the_bundles_checkpoint_are_named_unproved(log, run, tmp_path):
    """A bundle made seconds after its last events carries a checkpoint that does not cover them yet."""
    bundle = bundle_of(log, seqs=(7, 1_234), size=2_000)
    newest = bundle_of(log, seqs=(2_999,))["audit"]["events"]
    bundle["audit"]["events"] += newest
    bundle["audit"]["not_yet_under_a_checkpoint"] = [2_999]
    path = tmp_path / "bundle.json"
    path.write_text(json.dumps(bundle, ensure_ascii=False))
    result = run("--bundle", path, "--public-key", VKEY)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.startswith("OK: 2 event(s) of the bundle proved included in the signed tree of 2000")
    assert "1 event(s) newer than the bundle's signed checkpoint (tree of 2000) are not proved: #2999" in result.stdout


def _tamper_canonical(bundle):
    entry = bundle["audit"]["events"][1]
    entry["canonical"] = entry["canonical"].replace("approve", "reject")
    entry["event"] = json.loads(entry["canonical"])
    del entry["prev_hash"], entry["hash"]  # a forger drops what would give the change away at once


def _tamper_proof(bundle):
    proof = bundle["audit"]["proofs"][1]["proof"]
    proof[2] = base64.b64encode(bytes(32)).decode()


def _tamper_index(bundle):
    bundle["audit"]["proofs"][1]["index"] += 1


def _tamper_shown(bundle):
    bundle["audit"]["events"][1]["event"]["reason"] = "looks fine"


def _drop_proof(bundle):
    del bundle["audit"]["proofs"][1]


def _other_key(bundle):
    note = bundle["audit"]["checkpoint_note"]
    body = note[:note.rindex("\n\n") + 1]
    bundle["audit"]["checkpoint_note"] = sign_note(body, "someone.else/log", OTHER_SEED)


@pytest.mark.parametrize("tamper, named, says", [
    (_tamper_canonical, 1_234, "is not proved included"),
    (_tamper_proof, 1_234, "is not proved included"),
    (_tamper_index, 1_234, "not leaf 1233"),
    (_tamper_shown, 1_234, "differ from its canonical contents"),
    (_drop_proof, 1_234, "has no inclusion proof"),
    (_other_key, None, "signed by another key"),
], ids=lambda v: v.__name__ if callable(v) else None)
def test_a_tampered_bundle_names_what_is_wrong(log, run, tmp_path, tamper, named, says):
    bundle = bundle_of(log)
    tamper(bundle)
    path = tmp_path / "bundle.json"
    path.write_text(json.dumps(bundle, ensure_ascii=False))
    result = run("--bundle", path, "--public-key", VKEY)
    assert result.returncode == 1, result.stdout + result.stderr
    assert says in result.stdout and (named is None or result.stdout.startswith(f"BROKEN at event #{named}:"))


def test_a_bundle_without_proofs_is_unusable_input(log, run, tmp_path):
    bundle = bundle_of(log)
    del bundle["audit"]["checkpoint_note"]
    path = tmp_path / "old-bundle.json"
    path.write_text(json.dumps(bundle))
    result = run("--bundle", path, "--public-key", VKEY)
    assert result.returncode == 2 and "no signed checkpoint note" in result.stderr
    (tmp_path / "garbage.json").write_text("{not json")
    assert run("--bundle", tmp_path / "garbage.json", "--public-key", VKEY).returncode == 2
    assert run("--bundle", path).returncode == 2  # no public key


# --- two checkpoints ------------------------------------------------------------------------------

def consistency_files(tmp_path: Path, old_note: str, new_note: str, first: int, second: int,
                      proof: list[bytes]) -> tuple[Path, Path, Path]:
    old, new, answer = tmp_path / "old.note", tmp_path / "new.note", tmp_path / "proof.json"
    old.write_text(old_note, encoding="utf-8", newline="")
    new.write_text(new_note, encoding="utf-8", newline="")
    answer.write_text(json.dumps({"first": first, "second": second,
                                  "proof": [base64.b64encode(h).decode() for h in proof]}))
    return old, new, answer


@pytest.mark.parametrize("first, second", [(1_000, 3_000), (1_024, 3_000), (2_999, 3_000), (3_000, 3_000),
                                           (1, 2)])
def test_two_checkpoints_of_one_log_are_consistent(log, run, tmp_path, first, second):
    files = consistency_files(tmp_path, head_note(log.tree, first), head_note(log.tree, second), first, second,
                              log.tree.consistency_proof(first, second))
    result = run("--consistency", *files, "--public-key", VKEY)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"the signed tree of {second} events extends the signed tree of {first} events" in result.stdout


def test_a_forked_log_is_named(log, run, tmp_path):
    """The log signed a tree of 1,000 events, then a tree of 3,000 whose first 1,000 differ in one
    event: whatever proof it serves, the two do not join."""
    forked = list(log.canonicals)
    forked[499] = canonical_json(payload(500, reason="the other history"))
    fork = tree_of(forked)
    old_note, new_note = head_note(log.tree, 1_000), head_note(fork, 3_000)
    for proof in (fork.consistency_proof(1_000, 3_000), log.tree.consistency_proof(1_000, 3_000)):
        result = run("--consistency", *consistency_files(tmp_path, old_note, new_note, 1_000, 3_000, proof),
                     "--public-key", VKEY)
        assert result.returncode == 1 and "the log forked" in result.stdout, result.stdout + result.stderr
    same_size = consistency_files(tmp_path, head_note(log.tree, 3_000), new_note, 3_000, 3_000, [])
    result = run("--consistency", *same_size, "--public-key", VKEY)
    assert result.returncode == 1 and "two signed checkpoints of 3000 events" in result.stdout


def test_a_tampered_consistency_proof_or_note_is_refused(log, run, tmp_path):
    old_note, new_note = head_note(log.tree, 1_000), head_note(log.tree, 3_000)
    proof = log.tree.consistency_proof(1_000, 3_000)
    bad = [*proof[:1], bytes(32), *proof[2:]]
    result = run("--consistency", *consistency_files(tmp_path, old_note, new_note, 1_000, 3_000, bad),
                 "--public-key", VKEY)
    assert result.returncode == 1
    other = sign_note(checkpoint_body(ORIGIN, 3_000, log.tree.root()), "someone.else/log", OTHER_SEED)
    result = run("--consistency", *consistency_files(tmp_path, old_note, other, 1_000, 3_000, proof),
                 "--public-key", VKEY)
    assert result.returncode == 1 and "the new checkpoint is signed by another key" in result.stdout
    # given the wrong way round, or with a proof for other sizes: unusable input
    result = run("--consistency", *consistency_files(tmp_path, new_note, old_note, 1_000, 3_000, proof),
                 "--public-key", VKEY)
    assert result.returncode == 2 and "give the older first" in result.stderr
    result = run("--consistency", *consistency_files(tmp_path, old_note, new_note, 1_000, 2_999, proof),
                 "--public-key", VKEY)
    assert result.returncode == 2 and "not for sizes 1000 → 3000" in result.stderr


def test_one_mode_at_a_time(run, tmp_path):
    result = run("--public-key", VKEY)
    assert result.returncode == 2 and "give one of" in result.stderr
