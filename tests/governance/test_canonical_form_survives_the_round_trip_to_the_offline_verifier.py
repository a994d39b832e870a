"""AUD-09: whatever a service audits (unicode, nested dicts, big integers, Decimals, datetimes with
offsets), the bytes hashed by record() are what the offline verifier recomputes from an export
line read back from the database; non-finite numbers are refused before anything is hashed."""

from __future__ import annotations

import datetime as dt
import json
from decimal import Decimal

import pytest
from django.db import transaction
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from audit import log as audit
from audit.models import AuditEvent
from audit.verify_audit import chain_hash, parse_line, verify

EXAMPLES = 100
NON_FINITE_EXAMPLES = 40

# Text PostgreSQL and UTF-8 can store byte for byte: no lone surrogates, no NUL (refused, below).
text = st.text(st.characters(exclude_categories=("Cs",), exclude_characters="\x00"), max_size=40)
offsets = st.builds(dt.timezone, st.timedeltas(min_value=dt.timedelta(hours=-23, minutes=-59),
                                               max_value=dt.timedelta(hours=23, minutes=59)))
datetimes = st.datetimes(min_value=dt.datetime(1, 1, 2), max_value=dt.datetime(9999, 12, 30),
                         timezones=st.one_of(offsets, st.timezones()))
scalars = st.one_of(
    st.none(), st.booleans(), text,
    st.integers(min_value=-(2**256), max_value=2**256),
    st.decimals(allow_nan=False, allow_infinity=False),
    st.floats(allow_nan=False, allow_infinity=False),
    datetimes,
)
payloads = st.dictionaries(text, st.recursive(
    scalars, lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(text, inner, max_size=4)),
    max_leaves=25), max_size=6)


def _same(stored, original) -> bool:
    if isinstance(original, dict):
        return stored.keys() == original.keys() and all(_same(stored[k], original[k]) for k in original)
    if isinstance(original, list):
        return len(stored) == len(original) and all(map(_same, stored, original))
    if isinstance(original, dt.datetime):  # the same instant, written as UTC with Z
        return stored.endswith("Z") and dt.datetime.fromisoformat(stored[:-1] + "+00:00") == original.astimezone(dt.UTC)
    if isinstance(original, float):
        return float(stored) == original
    if isinstance(original, Decimal):
        return Decimal(stored) == original and str(Decimal(stored)) == str(original)
    return stored == original and type(stored) is type(original)


@pytest.mark.django_db
@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=payloads, reason=text)
@example(data={"ünïcødé ✓": "\u2028\u2029\t\"\\", "big": 2**200, "neg": -(2**200), "money": Decimal("120.50"),
               "at": dt.datetime(2025, 3, 30, 1, 30, tzinfo=dt.timezone(dt.timedelta(hours=-9, minutes=-30))),
               "nested": {"b": [1, {"a": None}], "a": True}, "emoji": "🧯"}, reason="Grüße")
@example(data={"seq": 0, "subject": {"seq": 0, "v": 1}, "x": '"seq":0,'}, reason='"seq":0,"subject":{')  # look-alikes
def test_hash_recomputed_offline_from_the_export_equals_the_stored_hash(data, reason):
    with transaction.atomic():
        seq = audit.record("property-test", "test.round_trip", ("test.item", 1), data=data, reason=reason).seq
    stored = AuditEvent.objects.get(seq=seq)  # read back: what the database holds
    line = audit.export_line(stored)
    number, prev_hash, event_hash, canonical = parse_line(1, line)

    assert number == seq and prev_hash == stored.prev_hash
    assert chain_hash(prev_hash, canonical) == event_hash == stored.hash
    assert canonical == stored.canonical
    assert _same(json.loads(canonical)["data"], data)
    assert json.loads(canonical)["reason"] == reason


@pytest.mark.django_db
def test_a_chain_of_such_events_verifies_end_to_end_offline(figures):
    """Awkward values in consecutive events, exported and verified as the standalone verifier does."""
    with transaction.atomic():
        for n, value in enumerate([2**255, Decimal("-0.000"), "ＡＢＣ", {"z": {"y": [1.5, -0.0]}}]):
            audit.record("property-test", "test.round_trip", ("test.item", n), data={"v": value})
    lines = [audit.export_line(e) for e in AuditEvent.objects.order_by("seq")]
    report = verify(parse_line(i, line) for i, line in enumerate(lines, 1))
    figures(f"AUD-09 hypothesis examples per run={EXAMPLES} (round trip) + {NON_FINITE_EXAMPLES} (non-finite refused); "
            f"chain of {report.events} awkward events verified offline: "
            f"{'OK' if report.ok else report.summary()}")
    assert report.ok, report.summary()


NON_FINITE = [float("nan"), float("inf"), float("-inf"), Decimal("NaN"), Decimal("Infinity"), Decimal("-Infinity"),
              Decimal("sNaN")]


@pytest.mark.django_db
@settings(max_examples=NON_FINITE_EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=payloads, bad=st.sampled_from(NON_FINITE), path=st.lists(text, min_size=1, max_size=3))
def test_non_finite_numbers_are_refused_before_hashing(data, bad, path):
    nested = bad
    for key in reversed(path):
        nested = {key: nested}
    data = {**data, **nested}
    before = audit.head()
    with pytest.raises(audit.AuditError, match="not a finite number"), transaction.atomic():
        audit.record("property-test", "test.round_trip", ("test.item", 1), data=data)
    assert audit.head() == before


@pytest.mark.django_db
@pytest.mark.parametrize("bad", ["nul \x00 byte", "lone \ud800 surrogate"])
def test_text_the_database_cannot_store_byte_for_byte_is_refused(bad):
    before = audit.head()
    for kwargs in ({"data": {"note": bad}}, {"data": {bad: 1}}, {"reason": bad}):
        with pytest.raises(audit.AuditError), transaction.atomic():
            audit.record("property-test", "test.round_trip", ("test.item", 1), **kwargs)
    assert audit.head() == before
