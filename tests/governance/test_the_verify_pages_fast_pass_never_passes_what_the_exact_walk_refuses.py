"""The verify page checks the chain in one streamed scan (PostgreSQL checks links and columns,
Python every hash) and falls back to the exact walk on any doubt. Whatever was tampered with, the
fast pass must not pass it, and the page must name the same first broken event as the exact walk."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable

import pytest
from django.conf import settings
from django.db import connection, transaction

from audit import log as audit
from audit.verify_audit import chain_hash, verify

pytestmark = pytest.mark.django_db
TABLE = "governance_auditevent"


@pytest.fixture
def chain(workflow) -> list[int]:
    """Events with awkward contents (quotes, newlines, non-ASCII, an empty workflow, a system
    actor) around a checkpoint; returns their seqs."""
    seqs = []
    reasons = ['a "quoted" reason', "line one\nline two", "ünïcødé ✓ 雪", "", "back\\slash"]
    for n, reason in enumerate(reasons):
        with transaction.atomic():
            actor = None if n % 2 else "system:test"
            event = audit.record(actor, "test.awkward", workflow, data={"n": n, "seq": n, "nested": {"seq": 99}},
                                 reason=reason, workflow="" if n == 3 else None)
            seqs.append(event.seq)
        if n == 2:
            with transaction.atomic():
                audit.write_checkpoint("test")
    return seqs


def exact_walk():
    return verify(audit._db_events(), audit.db_checkpoints(), settings.AUDIT_CHECKPOINT_KEY)


def tamper(*statements: tuple[str, list | dict]) -> None:
    with connection.cursor() as cursor:
        cursor.execute(f"ALTER TABLE {TABLE} DISABLE TRIGGER {TABLE}_no_mod")
        for sql, params in statements:
            cursor.execute(sql, params)
        cursor.execute(f"ALTER TABLE {TABLE} ENABLE ALWAYS TRIGGER {TABLE}_no_mod")


def rehash_from(seq: int) -> None:
    """A rewrite that recomputes every hash from `seq` on, as someone with the database would."""
    prev = audit.AuditEvent.objects.get(seq=seq - 1).hash
    updates = []
    for event in audit.AuditEvent.objects.filter(seq__gte=seq).order_by("seq"):
        new_hash = chain_hash(prev, event.canonical)
        updates.append((f"UPDATE {TABLE} SET prev_hash = %s, hash = %s WHERE seq = %s", [prev, new_hash, event.seq]))
        prev = new_hash
    # hash and prev_hash are unique: park the old values out of the way first
    tamper((f"UPDATE {TABLE} SET hash = 'x' || seq, prev_hash = 'y' || seq WHERE seq >= %s", [seq]), *updates)


def test_an_untouched_chain_passes_the_fast_pass_with_the_exact_walks_result(chain):
    fast = audit._verify_database_fast(audit.db_checkpoints(), None)
    exact = exact_walk()
    assert fast is not None and fast.ok and exact.ok
    assert (fast.events, fast.head_seq, fast.head_hash, fast.checkpoints) == \
           (exact.events, exact.head_seq, exact.head_hash, exact.checkpoints)
    assert fast.checkpoints >= 1 and audit.verify_database().summary() == exact.summary()


def test_progress_is_reported_as_the_scan_goes(chain):
    seen = []
    report = audit.verify_database(progress=seen.append)
    assert report.ok and seen and seen[-1] == report.events


def change(assignment: str, *, rehashed: bool = False) -> Callable[[int], None]:
    """Tampering with one event: `assignment` set on it (`%(seq)s` is its seq); with `rehashed`,
    every hash from there on recomputed."""
    def apply(seq: int) -> None:
        tamper((f"UPDATE {TABLE} SET {assignment} WHERE seq = %(seq)s", {"seq": seq}))
        if rehashed:
            rehash_from(seq)
    return apply


TAMPERING = {
    "a column": change("reason = 'rewritten'"),
    "the time by a microsecond": change("occurred_at = occurred_at + interval '1 microsecond'"),
    "the actor": change("actor_label = 'someone else'"),
    "the subject": change("subject_id = '424242'"),
    "the workflow": change("workflow_slug = 'elsewhere'"),
    "the action": change("action = 'test.other'"),
    "the hashed contents": change("""canonical = replace(canonical, '"n":', '"m":')"""),
    "contents that are not JSON": change("canonical = canonical || '}'"),
    "the hash's case": change("hash = upper(hash)"),
    "a hash that is not hex": change("hash = 'zz' || substr(hash, 3)"),
    "the link": change("prev_hash = repeat('ab', 32)"),
    "a deleted event": lambda s: tamper((f"DELETE FROM {TABLE} WHERE seq = %s", [s])),
    "the seq inside the contents, rehashed": change(
        """canonical = replace(canonical, '"seq":' || %(seq)s || ',"subject"', """
        """'"seq":' || (%(seq)s + 1000) || ',"subject"')""",
        rehashed=True),
    "a reason, rehashed from there on": change(
        "canonical = replace(canonical, 'line two', 'line 2'), reason = replace(reason, 'line two', 'line 2')",
        rehashed=True),
}


@pytest.mark.parametrize("what", list(TAMPERING))
def test_tampering_is_refused_by_the_fast_pass_and_named_like_the_exact_walk(chain, what):
    target = chain[1]
    TAMPERING[what](target)
    fast = audit._verify_database_fast(audit.db_checkpoints(), None)
    assert fast is None or not fast.ok
    exact = exact_walk()
    page = audit.verify_database()
    assert not exact.ok and not page.ok
    assert page.first_broken_seq == exact.first_broken_seq and page.problems == exact.problems
    # A consistent rewrite is caught by the signed checkpoint that follows it (after chain[2]).
    assert page.first_broken_seq == (chain[2] if what == "a reason, rehashed from there on" else target)


def test_time_formatting_agrees_with_the_database_across_the_range(workflow):
    """The fast pass renders occurred_at in SQL; it must match format_time for awkward instants."""
    instants = [dt.datetime(2026, 3, 29, 1, 0, 0, 1, tzinfo=dt.UTC), dt.datetime(1970, 1, 1, tzinfo=dt.UTC),
                dt.datetime(2099, 12, 31, 23, 59, 59, 999999, tzinfo=dt.UTC),
                dt.datetime(2026, 10, 25, 2, 30, tzinfo=dt.timezone(dt.timedelta(hours=2)))]
    with connection.cursor() as cursor:
        for instant in instants:
            cursor.execute("""SELECT to_char(%s::timestamptz AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"')""",
                           [instant])
            assert cursor.fetchone()[0] == audit.format_time(instant)
