"""rollouts.evaluation: pure functions over signal windows (no database)."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rollouts import evaluation as ev

NOW = datetime(2025, 3, 4, 23, 32, tzinfo=UTC)
START = NOW - timedelta(minutes=5)
LATENCY = ev.Trigger(1, "latency_p95_ms", "gt", 800.0, timedelta(minutes=5), 3, "critical")
QUALITY = ev.Criterion(2, "quality_score", "gte", 0.8, timedelta(minutes=30), 5)
LATENCY_TAG = ev.Tag(7, "expected_latency_increase: 15%", "expected_latency_increase", "latency_p95_ms", 15.0,
                     "migration changes query patterns", "rhea")
MIGRATION = ev.Tag(8, "migration_window: true", "migration_window", None, None, "planned maintenance", "rhea")


def samples(*values: float, end: datetime = NOW, step: timedelta = timedelta(seconds=15)) -> list[tuple[datetime, float]]:
    return [(end - step * (len(values) - 1 - i), v) for i, v in enumerate(values)]


def trigger(values, tags=(), rule=LATENCY) -> ev.Check:
    return ev.evaluate_trigger(rule, ev.stats_of(samples(*values), START, NOW), tags, start=START, end=NOW)


def criterion(values, rule=QUALITY) -> ev.Check:
    return ev.evaluate_criterion(rule, ev.stats_of(samples(*values), NOW - rule.window, NOW),
                                 start=NOW - rule.window, end=NOW)


def test_trigger_fires_when_every_sample_of_the_window_breaches():
    check = trigger([820, 870, 905])
    assert check.status == ev.FIRED
    assert check.value == 820 and check.samples == 3


def test_one_sample_under_the_threshold_keeps_the_trigger_holding():
    assert trigger([820, 790, 905]).status == ev.HOLDING


def test_too_few_samples_is_inconclusive_and_says_how_many():
    check = trigger([950, 990])
    assert check.status == ev.INCONCLUSIVE
    assert check.note == "2 of 3 samples needed"


def test_no_data_is_inconclusive_for_criteria_and_triggers():
    assert trigger([]).status == ev.INCONCLUSIVE
    assert criterion([]).status == ev.INCONCLUSIVE


def test_samples_outside_the_window_do_not_count():
    old = [(START - timedelta(seconds=1), 2000.0), (START, 2000.0)]  # the window is (start, end]
    stats = ev.stats_of(old + samples(900, 900), START, NOW)
    assert stats.count == 2


@pytest.mark.parametrize(("operator", "value", "breached"), [
    ("gt", 800.0, False), ("gte", 800.0, True), ("lt", 800.0, False), ("lte", 800.0, True),
    ("gt", 800.5, True), ("lt", 799.5, True),
])
def test_operators_at_and_around_the_threshold(operator, value, breached):
    rule = ev.Trigger(1, "m", operator, 800.0, timedelta(minutes=5), 1, "critical")
    assert (trigger([value], rule=rule).status == ev.FIRED) is breached


def test_criterion_compares_the_window_mean():
    assert criterion([0.9, 0.85, 0.7, 0.82, 0.81]).status == ev.MET  # mean 0.816
    assert criterion([0.9, 0.6, 0.7, 0.82, 0.81]).status == ev.NOT_MET
    assert criterion([0.9, 0.9]).status == ev.INCONCLUSIVE


# -- NaN can never disarm a trigger ------------------------------------------------------------

finite = st.floats(min_value=-1e6, max_value=1e6, allow_nan=False, allow_infinity=False)
non_finite = st.sampled_from([math.nan, math.inf, -math.inf])


@settings(max_examples=300, deadline=None)
@given(st.lists(finite, max_size=12), st.lists(non_finite, min_size=1, max_size=5), st.randoms())
def test_non_finite_values_never_lower_the_alarm(values, bad, rnd):
    mixed = values + bad
    rnd.shuffle(mixed)
    clean, dirty = trigger(values), trigger(mixed)
    assert dirty.status == clean.status
    assert dirty.ignored == len(bad)


def test_a_window_of_nan_only_is_inconclusive_never_holding():
    check = trigger([math.nan] * 10)
    assert check.status == ev.INCONCLUSIVE and check.ignored == 10


# -- context tags ------------------------------------------------------------------------------

def test_the_2am_spike_is_within_a_15_percent_latency_tag_and_the_tag_is_named():
    spike = [805, 860, 890, 910]  # +15 % on a 790 ms baseline; the trigger says > 800
    untagged, tagged = trigger(spike), trigger(spike, [LATENCY_TAG])
    assert untagged.status == ev.FIRED and not untagged.recommend_only
    assert tagged.status == ev.HOLDING
    assert tagged.threshold == pytest.approx(920.0)
    assert tagged.tag["label"] == "expected_latency_increase: 15%" and tagged.tag["effect"] == "widened"


def test_a_rise_beyond_the_expected_change_becomes_a_recommendation_citing_the_tag():
    check = trigger([1500, 1600, 1700], [LATENCY_TAG])
    assert check.status == ev.FIRED and check.recommend_only
    assert check.tag["id"] == 7 and check.tag["effect"] == "recommendation"


def test_a_migration_window_turns_any_breach_into_a_recommendation():
    check = trigger([900, 900, 900], [MIGRATION])
    assert check.status == ev.FIRED and check.recommend_only and check.tag["label"] == "migration_window: true"


def test_tags_on_other_metrics_change_nothing():
    cost = ev.Tag(9, "expected_cost_increase: 30%", "expected_cost_increase", "cost_per_task", 30.0)
    assert trigger([900, 900, 900], [cost]).recommend_only is False


def test_widening_relaxes_lower_bounds_downwards():
    quality = ev.Trigger(3, "quality_score", "lt", 0.8, timedelta(minutes=5), 3, "critical")
    tag = ev.Tag(10, "expected_change: 10%", "expected_change", "quality_score", 10.0)
    check = trigger([0.75, 0.74, 0.76], [tag], rule=quality)
    assert check.status == ev.HOLDING and check.threshold == pytest.approx(0.72)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.floats(min_value=0, max_value=5000), min_size=3, max_size=10), st.floats(min_value=0.1, max_value=200))
def test_a_tag_never_fires_a_trigger_that_holds_without_it(values, percent):
    tag = ev.Tag(1, "t", "expected_change", "latency_p95_ms", percent)
    if trigger(values).status == ev.HOLDING:
        assert trigger(values, [tag]).status == ev.HOLDING
    if trigger(values, [tag]).status == ev.FIRED:
        assert trigger(values, [tag]).recommend_only


# -- decisions by autonomy tier ----------------------------------------------------------------

def situation(**kw) -> ev.Situation:
    return ev.Situation(**{"state": "active", "tier": 1, "soak_complete": True, "has_next_ring": True, **kw})


FIRED = trigger([900, 900, 900])
MET = criterion([0.9] * 5)


@pytest.mark.parametrize(("tier", "handling"), [(1, ev.EXECUTE), (2, ev.OVERRIDE_WINDOW), (3, ev.GATE)])
def test_a_fired_critical_trigger_is_handled_as_its_tier_says(tier, handling):
    decision = ev.decide(situation(tier=tier), [MET], [FIRED])
    assert (decision.action, decision.handling) == ("rollback", handling)
    assert decision.evidence()["trigger"]["rule"] == "latency_p95_ms > 800 sustained for 5 min"


def test_a_tagged_breach_asks_a_person_even_at_tier_1_and_the_evidence_names_the_tag():
    decision = ev.decide(situation(tier=1), [MET], [trigger([1500] * 3, [LATENCY_TAG])])
    assert (decision.action, decision.handling) == ("rollback", ev.GATE)
    assert decision.evidence()["context_tag"]["label"] == "expected_latency_increase: 15%"


def test_a_warning_trigger_proposes_the_fallback_and_critical_wins_over_warning():
    warning = ev.evaluate_trigger(ev.Trigger(5, "error_rate", "gt", 0.05, timedelta(minutes=5), 3, "warning"),
                                  ev.stats_of(samples(0.1, 0.1, 0.1)), [], start=START, end=NOW)
    assert ev.decide(situation(), [MET], [warning]).action == "fallback"
    assert ev.decide(situation(), [MET], [warning, FIRED]).action == "rollback"
    assert ev.decide(situation(state="fallback"), [MET], [warning]).action == "none"


def test_expansion_is_automatic_only_at_tier_1_without_an_approval_point():
    assert ev.decide(situation(tier=1), [MET], [trigger([700] * 3)]).handling == ev.EXECUTE
    assert ev.decide(situation(tier=2), [MET], [trigger([700] * 3)]).handling == ev.GATE
    assert ev.decide(situation(tier=1, next_ring_is_approval_point=True), [MET], [trigger([700] * 3)]).handling == ev.GATE


def test_inconclusive_data_asks_a_person_before_expanding_and_never_rolls_back():
    decision = ev.decide(situation(tier=1), [criterion([])], [trigger([])])
    assert (decision.action, decision.handling) == ("expand", ev.GATE)
    assert "inconclusive" in decision.reason


def test_nothing_happens_before_the_soak_ends_or_while_a_criterion_is_not_met():
    assert ev.decide(situation(soak_complete=False), [MET], [trigger([700] * 3)]).action == "none"
    assert ev.decide(situation(), [criterion([0.5] * 5)], [trigger([700] * 3)]).action == "none"
    assert ev.decide(situation(has_next_ring=False), [MET], [trigger([700] * 3)]).action == "none"
    assert ev.decide(situation(state="paused"), [MET], [trigger([700] * 3)]).action == "none"
