"""The sequencer: the only writer of the log (AuditEvent, AuditTreeNode, AuditTreeHead).

Entries are accepted by `audit.log.record()` with the change they record, with no lock and no read
of the log. One sequencer at a time (a PostgreSQL advisory lock elects it) takes the entries of
transactions that have all ended — their `xid` below the oldest transaction still running — in
(xid, id) order, in batches: each gets the next `seq`, extends the hash chain, and becomes the
next leaf of the RFC 9162 Merkle tree (leaf = the event's canonical bytes), whose completed
perfect subtrees are stored. A signed checkpoint (C2SP tlog-checkpoint in an Ed25519 signed note)
follows whenever the tree grew, at most every AUDIT_CHECKPOINT_INTERVAL_SECONDS, and at least
every AUDIT_CHECKPOINT_IDLE_SECONDS when nothing happens.

AUDIT_SEQUENCER = "inline" sequences each entry in the transaction that records it, under a
transaction-scoped advisory lock (writers queue on it): the zero-setup SQLite demo, where writers
are serialised anyway, and the test suite's default. "background" (production) leaves it to
`manage.py audit_sequencer`, and to beat's `audit.tasks.sequence` as a safety net.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import hmac
import json
import logging
from collections.abc import Iterable
from typing import NamedTuple

from django.conf import settings
from django.db import connection, transaction
from django.db.backends.utils import CursorWrapper

from audit import verify_audit as tlog
from audit.models import AuditEntry, AuditEvent, AuditTreeHead, AuditTreeNode
from core import clock

log = logging.getLogger(__name__)

# pg_advisory_xact_lock keys: writers in inline mode (the old chain lock), and the sequencer's election.
AUDIT_LOCK_KEY = 0x52494E47  # "RING"
SEQUENCER_LOCK_KEY = 0x52494E48
GENESIS = tlog.GENESIS
SEQ_PLACEHOLDER = '"seq":0,'


class SequencingError(Exception):
    pass


class Head(NamedTuple):
    """The log's head: its size (= the last seq = the number of leaves) and the chain hash there."""

    size: int
    hash: str


# --- entries ---------------------------------------------------------------------------------------

def entry_mac(canonical_unsequenced: str) -> str:
    """The MAC an entry carries from the moment it is accepted (key outside the database)."""
    return hmac.new(settings.AUDIT_CHECKPOINT_KEY.encode(), canonical_unsequenced.encode("utf-8"),
                    hashlib.sha256).hexdigest()


def with_seq(canonical_unsequenced: str, seq: int) -> str:
    """Write the seq into the canonical JSON built with seq 0. Keys are sorted and strings escaped,
    so the last unescaped `"seq":0,` is the top-level one (only subject, v, workflow follow it)."""
    at = canonical_unsequenced.rindex(SEQ_PLACEHOLDER) + len('"seq":')
    return f"{canonical_unsequenced[:at]}{seq}{canonical_unsequenced[at + 1:]}"


def head() -> Head:
    last = AuditEvent.objects.order_by("-seq").values_list("seq", "hash").first()
    return Head(*last) if last else Head(0, GENESIS)


# --- the tree ----------------------------------------------------------------------------------------

class Nodes:
    """Reads stored perfect-subtree hashes, with the ones a batch has just made."""

    def __init__(self, size: int) -> None:
        self.cache: dict[tuple[int, int], bytes] = {}
        if size:
            self._load(frontier(size))

    def _load(self, keys: Iterable[tuple[int, int]]) -> None:
        keys = [k for k in keys if k not in self.cache]
        if not keys:
            return
        where = " OR ".join(['(level = %s AND "index" = %s)'] * len(keys))  # "index" is a keyword in SQLite
        with connection.cursor() as cursor:
            cursor.execute(f'SELECT level, "index", hash FROM audit_tree_node WHERE {where}',
                           [v for k in keys for v in k])
            for level, index, node in cursor.fetchall():
                self.cache[(level, index)] = bytes(node)

    def __call__(self, level: int, index: int) -> bytes:
        key = (level, index)
        if key not in self.cache:
            self._load([key])
        try:
            return self.cache[key]
        except KeyError:
            raise SequencingError(f"tree node {level}/{index} is missing") from None

    def add(self, made: Iterable[tuple[int, int, bytes]]) -> None:
        for level, index, node in made:
            self.cache[(level, index)] = node


def frontier(size: int) -> list[tuple[int, int]]:
    """The perfect subtrees a tree of `size` leaves is made of, left to right (its right edge)."""
    keys, start = [], 0
    for level in range(size.bit_length() - 1, -1, -1):
        if size >> level & 1:
            keys.append((level, start >> level))
            start += 1 << level
    return keys


def root(size: int, nodes: Nodes | None = None) -> bytes:
    return tlog.tree_root(size, nodes or Nodes(size))


# --- sequencing ---------------------------------------------------------------------------------------

def _append(entries: list[tuple[int, str, str]], at: Head) -> list[AuditEvent]:
    """Give `entries` (id, canonical with seq 0, mac) the next seqs after `at`; write the events
    and the tree nodes they complete. Runs under the sequencer's (or inline writers') lock."""
    events, leaves = [], []
    seq, prev, now = at.size, at.hash, clock.now()
    for entry_id, unsequenced, mac in entries:
        if not hmac.compare_digest(mac, entry_mac(unsequenced)):
            raise SequencingError(f"audit entry {entry_id} was altered after it was accepted (its MAC does not "
                                  "match): sequencing stops here until it is looked at")
        seq += 1
        canonical = with_seq(unsequenced, seq)
        event_hash = tlog.chain_hash(prev, canonical)
        payload = json.loads(canonical)
        events.append(AuditEvent(
            seq=seq, entry_id=entry_id, canonical=canonical, prev_hash=prev, hash=event_hash, sequenced_at=now,
            occurred_at=dt.datetime.fromisoformat(payload["at"]), action=payload["action"],
            actor_kind=payload["actor"]["kind"], actor_id=payload["actor"]["id"],
            actor_label=payload["actor"]["label"], subject_type=payload["subject"]["type"],
            subject_id=payload["subject"]["id"], workflow_slug=payload["workflow"], reason=payload["reason"],
            data=payload["data"]))
        leaves.append(tlog.leaf_hash(canonical.encode("utf-8")))
        prev = event_hash
    if not events:
        return []
    made = tlog.new_nodes(at.size, leaves, Nodes(at.size))
    AuditEvent.objects.bulk_create(events)
    AuditTreeNode.objects.bulk_create([AuditTreeNode(level=lv, index=ix, hash=h) for lv, ix, h in made])
    return events


def append_inline(entry_id: int, unsequenced: str, mac: str) -> AuditEvent:
    """Inline mode: sequence this entry now, in the transaction that recorded it, under the writers' lock."""
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_advisory_xact_lock(%s)", [AUDIT_LOCK_KEY])
    return _append([(entry_id, unsequenced, mac)], head())[0]


# The horizon: the oldest transaction id still running in this database (another database's long
# transaction does not hold the log back), or the next id to be assigned when none is. pg_stat_activity
# gives 32-bit xids; they are widened with the epoch of the snapshot's xmax (the app's sessions all
# run as one role, whose transactions it shows).
_HORIZON_SQL = """
WITH s AS (SELECT pg_snapshot_xmax(pg_current_snapshot())::text::bigint AS xmax)
SELECT least(s.xmax, min((((s.xmax >> 32) - CASE WHEN a.backend_xid::text::bigint > (s.xmax & 4294967295)
                                               THEN 1 ELSE 0 END) << 32) | a.backend_xid::text::bigint))
FROM s LEFT JOIN pg_stat_activity AS a
  ON a.datname = current_database() AND a.pid <> pg_backend_pid() AND a.backend_xid IS NOT NULL
GROUP BY s.xmax
"""

_PENDING_SQL = """
SELECT e.id, e.canonical, e.mac, e.xid
FROM audit_entry AS e
WHERE (e.xid, e.id) > (%(xid)s, %(id)s) AND e.xid < %(horizon)s
  AND NOT EXISTS (SELECT 1 FROM governance_auditevent AS ev WHERE ev.entry_id = e.id)
ORDER BY e.xid, e.id
LIMIT %(limit)s
"""


def _last_placed(cursor: CursorWrapper) -> tuple[int, int]:
    """The (xid, id) of the entry the log ends with; (0, 0) for an empty log."""
    cursor.execute("SELECT e.xid, e.id FROM governance_auditevent AS ev JOIN audit_entry AS e "
                   "ON e.id = ev.entry_id ORDER BY ev.seq DESC LIMIT 1")
    return cursor.fetchone() or (0, 0)


def sequence_batch(limit: int | None = None) -> int:
    """Background mode: if this process wins the election, sequence up to `limit` entries whose
    transactions have all ended; returns how many (0 when another sequencer holds the lock)."""
    limit = limit or settings.AUDIT_SEQUENCE_BATCH
    with transaction.atomic():
        if connection.vendor != "postgresql":  # SQLite: the only writer sequences inline
            return 0
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_try_advisory_xact_lock(%s)", [SEQUENCER_LOCK_KEY])
            if not cursor.fetchone()[0]:
                return 0
            # Every transaction with an id below the horizon has ended: its entries are all visible
            # now or never will be. Entries are taken in (xid, id) order from where the log stops.
            cursor.execute(_HORIZON_SQL)
            horizon = cursor.fetchone()[0]
            last = _last_placed(cursor)
            cursor.execute(_PENDING_SQL, {"xid": last[0], "id": last[1], "horizon": horizon, "limit": limit})
            rows = cursor.fetchall()
        events = _append([(entry_id, canonical, mac) for entry_id, canonical, mac, _ in rows], head())
    return len(events)


def sequence_pending(limit: int | None = None) -> int:
    """Sequence until nothing is left that may be sequenced now; returns how many."""
    done = 0
    while (n := sequence_batch(limit)) > 0:
        done += n
    return done


def backlog() -> tuple[int, float | None]:
    """Entries accepted and not yet in the log, and the age in seconds of the oldest (None if none).

    Read on every /metrics scrape, so only past where the log ends: the sequencer places entries in
    (xid, id) order and never leaves one behind, so every entry before that point is placed. (Each
    such scrape once joined the whole log: 780 ms at 1,000,000 entries, now under 1 ms.) The
    verifier and `overdue_entries` still look at every entry."""
    with connection.cursor() as cursor:
        last_xid, last_id = _last_placed(cursor)
        cursor.execute("SELECT count(*), min(e.occurred_at) FROM audit_entry AS e WHERE (e.xid, e.id) > (%s, %s) "
                       "AND NOT EXISTS (SELECT 1 FROM governance_auditevent AS ev WHERE ev.entry_id = e.id)",
                       [last_xid, last_id])
        count, oldest = cursor.fetchone()
    return count, (clock.now() - oldest).total_seconds() if oldest else None


def overdue_entries(limit: int = 20) -> list[tuple[int, dt.datetime]]:
    """Entries unsequenced for longer than the maximum merge delay: an alarm (health, verifier)."""
    cutoff = clock.now() - dt.timedelta(seconds=settings.AUDIT_MERGE_DELAY_SECONDS)
    return list(AuditEntry.objects.filter(occurred_at__lt=cutoff, event__isnull=True)
                .order_by("id").values_list("id", "occurred_at")[:limit])


# --- signed checkpoints -------------------------------------------------------------------------------

def signing_seed() -> bytes:
    seed = base64.b64decode(settings.AUDIT_SIGNING_KEY)
    if len(seed) != 32:
        raise SequencingError("AUDIT_SIGNING_KEY must be the base64 of a 32-byte Ed25519 seed")
    return seed


def public_key() -> bytes:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

    key = Ed25519PrivateKey.from_private_bytes(signing_seed())
    return key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)


def vkey() -> str:
    return tlog.note_vkey(settings.AUDIT_LOG_ORIGIN, public_key())


@transaction.atomic
def sign_tree_head(now: dt.datetime | None = None) -> AuditTreeHead:
    """Sign the tree as it stands and ship the note outside the database after commit."""
    now = now or clock.now()
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:  # heads in size order: not two signers at once
            cursor.execute("SELECT pg_advisory_xact_lock(%s)", [SEQUENCER_LOCK_KEY + 1])
    size = head().size
    tree_root = root(size)
    body = tlog.checkpoint_body(settings.AUDIT_LOG_ORIGIN, size, tree_root)
    note = tlog.sign_note(body, settings.AUDIT_LOG_ORIGIN, signing_seed())
    signed = AuditTreeHead.objects.create(created_at=now, tree_size=size, root_hash=tree_root.hex(), note=note)
    transaction.on_commit(lambda: ship(tree_head_line(signed)))
    return signed


def sign_tree_head_if_due() -> AuditTreeHead | None:
    """A new checkpoint when the tree grew (at most every AUDIT_CHECKPOINT_INTERVAL_SECONDS), or
    when the last one is AUDIT_CHECKPOINT_IDLE_SECONDS old even if nothing happened."""
    last = AuditTreeHead.objects.order_by("-tree_size", "-id").values_list("tree_size", "created_at").first()
    now = clock.now()
    if last is not None:
        age = (now - last[1]).total_seconds()
        grown = head().size > last[0] and age >= settings.AUDIT_CHECKPOINT_INTERVAL_SECONDS
        if not grown and age < settings.AUDIT_CHECKPOINT_IDLE_SECONDS:
            return None
    return sign_tree_head(now)


def latest_tree_head() -> AuditTreeHead | None:
    return AuditTreeHead.objects.order_by("-tree_size", "-id").first()


def tree_head_line(signed: AuditTreeHead) -> str:
    return json.dumps({"type": "tlog_checkpoint", "note": signed.note}, ensure_ascii=False)


def ship(line: str) -> None:
    """Append a signed checkpoint's line to AUDIT_CHECKPOINT_FILE, outside the database (after commit)."""
    path = settings.AUDIT_CHECKPOINT_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", encoding="utf-8") as fh:
        fh.write(line + "\n")


# --- proofs -----------------------------------------------------------------------------------------

def inclusion_proof(index: int, tree_size: int) -> list[bytes]:
    return tlog.inclusion_proof(index, tree_size, Nodes(tree_size))


def consistency_proof(first: int, second: int) -> list[bytes]:
    return tlog.consistency_proof(first, second, Nodes(second))
