"""rollouts.evaluation: pure functions over signal windows (no database)."""

from __future__ import annotations

import math
import random
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rollouts import evaluation as ev

NOW = datetime(2025, 3, 4, 23, 32, tzinfo=UTC)
START = NOW - timedelta(minutes=5)
LATENCY = ev.Trigger(1, "latency_p95_ms", "gt", 800.0, timedelta(minutes=5), 3, "critical")
ERRORS = ev.Trigger(4, "error_rate", "gt", 0.05, timedelta(seconds=30), 3, "critical")
QUALITY = ev.Criterion(2, "quality_score", "gte", 0.8, timedelta(minutes=30), 5)
LATENCY_TAG = ev.Tag(7, "expected_latency_increase: 15%", "expected_latency_increase", "latency_p95_ms", 15.0,
                     "migration changes query patterns", "rhea")
MIGRATION = ev.Tag(8, "migration_window: true", "migration_window", None, None, "planned maintenance", "rhea")


def samples(*values: float, end: datetime = NOW, step: timedelta = timedelta(seconds=15),
            delay: timedelta = timedelta(0)) -> list[tuple[datetime, float, datetime]]:
    """(observed_at, value, received_at): the last one measured at `end`, each received `delay` later."""
    return [(end - step * (len(values) - 1 - i), v, end - step * (len(values) - 1 - i) + delay)
            for i, v in enumerate(values)]


def check_of(rule: ev.Trigger, rows, tags=(), *, now: datetime = NOW, lateness: timedelta | None = None,
             watching_since: datetime | None = None) -> ev.Check:
    data = ev.collect(rule, rows, now=now, thresholds=ev.thresholds_for(rule, tags), lateness=lateness,
                      watching_since=watching_since)
    return ev.evaluate_trigger(rule, data, tags)


def trigger(values, tags=(), rule=LATENCY) -> ev.Check:
    return check_of(rule, samples(*values), tags)


def criterion(values, rule=QUALITY, **kw) -> ev.Check:
    rows = [(at, v) for at, v, _ in samples(*values)]
    return ev.evaluate_criterion(rule, ev.stats_of(rows, NOW - rule.window, NOW), start=NOW - rule.window, end=NOW,
                                 **kw)


def test_trigger_fires_when_every_sample_of_the_window_breaches():
    check = trigger([820, 870, 905])
    assert check.status == ev.FIRED and not check.ask_first
    assert check.value == pytest.approx(865) and check.samples == 3 and check.share == 100


def test_the_window_median_beyond_the_threshold_fires_and_one_sample_in_three_does_not():
    assert trigger([820, 790, 905]).status == ev.FIRED  # 67 % beyond: at least the default 50 %
    assert trigger([820, 790, 780]).status == ev.HOLDING  # one noisy sample of three


def test_too_few_healthy_samples_is_inconclusive_and_says_how_many():
    check = trigger([700, 710])
    assert check.status == ev.INCONCLUSIVE
    assert check.note == "2 of 3 samples needed within 10 min"


def test_no_data_is_inconclusive_for_criteria_and_triggers():
    assert trigger([]).status == ev.INCONCLUSIVE
    assert criterion([]).status == ev.INCONCLUSIVE


def test_samples_outside_the_window_do_not_count():
    old = [(START - timedelta(seconds=1), 2000.0), (START, 2000.0)]  # the window is (start, end]
    stats = ev.stats_of(old + [(at, v) for at, v, _ in samples(900, 900)], START, NOW)
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


def test_a_criterion_whose_metric_went_quiet_is_never_met():
    check = criterion([0.9] * 5, fresh_after=NOW)  # nothing newer than the cut-off
    assert check.status == ev.INCONCLUSIVE and "no sample since 23:32:00" in check.note


# -- 1. event time: the watermark, lateness ---------------------------------------------------------

def test_samples_arriving_30_s_late_fire_a_30_s_trigger_at_their_own_time():
    """The issue's replay: every sample arrives 30 s after it was measured. Windows measured back
    from now would never hold one; the watermark is the newest sample's own time."""
    rows = samples(*[0.08] * 40, step=timedelta(seconds=1), end=NOW - timedelta(seconds=30),
                   delay=timedelta(seconds=30))
    check = check_of(ERRORS, rows, lateness=timedelta(minutes=5))
    assert check.status == ev.FIRED
    assert check.window_end == NOW - timedelta(seconds=30) and check.samples == 30


def test_a_sample_later_than_the_allowed_lateness_is_counted_apart_and_never_used():
    on_time = samples(*[0.01] * 30, step=timedelta(seconds=1))
    too_late = samples(*[0.9] * 30, step=timedelta(seconds=1), end=NOW - timedelta(minutes=10, seconds=1),
                       delay=timedelta(minutes=10))
    check = check_of(ERRORS, on_time + too_late, lateness=timedelta(minutes=5))
    assert check.status == ev.HOLDING and check.late == 30


# -- 2. breach statistics and flapping ------------------------------------------------------------

def test_the_share_statistic_fires_from_its_share_on():
    assert trigger([900, 700, 700, 900, 900]).status == ev.FIRED  # 60 % ≥ the default 50 %
    assert trigger([900, 700, 700, 700, 900]).status == ev.HOLDING  # 40 %
    strict = ev.Trigger(1, "latency_p95_ms", "gt", 800.0, timedelta(minutes=5), 3, "critical", breach_share=100,
                        flap_breaches=0)
    assert trigger([900, 900, 700, 900, 900], rule=strict).status == ev.HOLDING  # 100 %: every sample, the old rule


def test_the_mean_statistic_fires_on_the_window_mean():
    rule = ev.Trigger(1, "latency_p95_ms", "gt", 800.0, timedelta(minutes=5), 3, "critical", statistic=ev.MEAN)
    check = trigger([1200, 700, 700, 1200], rule=rule)  # mean 950, half the samples beyond
    assert check.status == ev.FIRED and "mean 950" in check.note


def flapping_errors(minutes: int = 5, up: int = 20, down: int = 20) -> list[tuple[datetime, float, datetime]]:
    """The issue's flapping error rate: `up` s at 8 %, `down` s at 4 %, one sample a second."""
    values = [0.08 if (i % (up + down)) < up else 0.04 for i in range(minutes * 60)]
    return samples(*values, step=timedelta(seconds=1))


def test_flapping_20_s_above_and_20_s_below_fires_with_the_defaults():
    rows = flapping_errors()
    values = [v for _, v, _ in rows]
    assert sum(values) / len(values) == pytest.approx(0.061, abs=1e-3)  # 53 % of the samples beyond 5 %
    assert check_of(ERRORS, rows).status == ev.FIRED


def test_with_every_sample_required_the_flapping_rule_still_catches_it():
    strict = ev.Trigger(4, "error_rate", "gt", 0.05, timedelta(seconds=30), 3, "critical", breach_share=100)
    check = check_of(strict, flapping_errors())
    assert check.status == ev.FIRED and check.flapping
    assert "flapping: " in check.note and "windows of 30 s had their median > 0.05" in check.note
    without = ev.Trigger(4, "error_rate", "gt", 0.05, timedelta(seconds=30), 3, "critical", breach_share=100,
                         flap_breaches=0)
    assert check_of(without, flapping_errors()).status == ev.HOLDING  # the old rule never fired on it


def test_isolated_noisy_samples_never_fire_even_over_a_long_run():
    """The containment bench's noise: one sample in six spikes above the threshold, never sustained."""
    rng = random.Random(7)
    values = [rng.uniform(820, 900) if i % 6 == 5 else rng.uniform(650, 790) for i in range(600)]
    rule = ev.Trigger(1, "latency_p95_ms", "gt", 800.0, timedelta(seconds=2), 3, "critical")
    for end in range(60, 600, 7):  # evaluated at every moment of the run
        rows = samples(*values[:end], step=timedelta(seconds=0.5))
        assert check_of(rule, rows).status == ev.HOLDING


# -- 3. sparse data and signals lost ---------------------------------------------------------------

def test_one_sample_a_minute_at_8_percent_asks_a_person_at_once():
    rows = samples(0.01, 0.01, 0.08, step=timedelta(minutes=1))
    check = check_of(ERRORS, rows)
    assert check.status == ev.FIRED and check.ask_first and check.sparse
    assert "1 of 3 samples needed within 1 min" in check.note and "a person is asked" in check.note
    decision = ev.decide(situation(tier=1), [], [check])
    assert (decision.action, decision.handling) == ("rollback", ev.OVERRIDE_WINDOW)


def test_sparse_data_uses_the_longer_window_it_needs_up_to_no_data_after():
    rule = ev.Trigger(4, "error_rate", "gt", 0.05, timedelta(seconds=30), 3, "critical",
                      no_data_after=timedelta(minutes=5))
    check = check_of(rule, samples(0.08, 0.08, 0.08, step=timedelta(minutes=1)))
    assert check.status == ev.FIRED and check.sparse and not check.ask_first
    assert check.note.startswith("sparse: the last 3 samples span 2 min")


def test_signals_are_lost_when_too_few_samples_were_received_within_no_data_after():
    rows = samples(*[0.01] * 30, step=timedelta(seconds=1), end=NOW - timedelta(seconds=90))
    check = check_of(ERRORS, rows, watching_since=NOW - timedelta(hours=1))
    assert check.status == ev.NO_DATA and check.lost and check.lost_at is None
    assert check.note.startswith("signals lost: 0 of 3 samples received within 1 min")
    assert check.last_received_at == NOW - timedelta(seconds=90)


def test_a_breach_just_before_the_signal_went_quiet_still_fires():
    rows = samples(*([0.01] * 20 + [0.09] * 30), step=timedelta(seconds=1), end=NOW - timedelta(seconds=90))
    check = check_of(ERRORS, rows, watching_since=NOW - timedelta(hours=1))
    assert check.status == ev.FIRED and check.lost


def test_nothing_is_lost_before_the_plan_has_run_for_no_data_after_and_the_next_check_is_known():
    assert not check_of(ERRORS, [], watching_since=NOW - timedelta(seconds=59)).lost
    rows = samples(*[0.01] * 10, step=timedelta(seconds=1))
    check = check_of(ERRORS, rows, watching_since=NOW - timedelta(hours=1))
    assert not check.lost and check.lost_at == NOW - timedelta(seconds=2) + timedelta(minutes=1)


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


# -- 4. context tags cover only what they expect ---------------------------------------------------

def test_the_2am_spike_is_within_a_15_percent_latency_tag_and_the_tag_is_named():
    spike = [805, 860, 890, 910]  # +15 % on a 790 ms baseline; the trigger says > 800
    untagged, tagged = trigger(spike), trigger(spike, [LATENCY_TAG])
    assert untagged.status == ev.FIRED and not untagged.ask_first
    assert tagged.status == ev.HOLDING
    assert tagged.threshold == pytest.approx(920.0)
    assert tagged.tag["label"] == "expected_latency_increase: 15%" and tagged.tag["effect"] == "widened"


def test_a_rise_beyond_the_expected_change_is_handled_as_if_untagged_and_the_evidence_says_so():
    check = trigger([1420, 1440, 1450], [LATENCY_TAG])  # +80 %
    assert check.status == ev.FIRED and not check.ask_first
    assert check.tag["id"] == 7 and check.tag["effect"] == "exceeded"
    decision = ev.decide(situation(tier=1), [MET], [check])
    assert (decision.action, decision.handling) == ("rollback", ev.EXECUTE)
    assert decision.evidence()["context_tags"][0]["effect"] == "exceeded"


def test_a_migration_window_makes_an_automatic_rollback_an_override_window_never_a_gate():
    check = trigger([900, 900, 900], [MIGRATION])
    assert check.status == ev.FIRED and check.ask_first and check.tag["effect"] == "override_window"
    assert ev.decide(situation(tier=1), [MET], [check]).handling == ev.OVERRIDE_WINDOW
    assert ev.decide(situation(tier=2), [MET], [check]).handling == ev.OVERRIDE_WINDOW
    assert ev.decide(situation(tier=3), [MET], [check]).handling == ev.GATE  # tier 3 is gated anyway


def test_a_latency_tag_does_not_cover_an_error_rise_and_says_what_each_tag_did():
    errors = ev.Trigger(5, "error_rate", "gt", 0.05, timedelta(minutes=5), 3, "critical")
    check = trigger([0.08, 0.08, 0.08], [LATENCY_TAG, MIGRATION], rule=errors)
    assert check.status == ev.FIRED and check.threshold == 0.05
    assert [t["label"] for t in check.tags] == ["migration_window: true"]


def test_widening_relaxes_lower_bounds_downwards():
    quality = ev.Trigger(3, "quality_score", "lt", 0.8, timedelta(minutes=5), 3, "critical")
    tag = ev.Tag(10, "expected_change: 10%", "expected_change", "quality_score", 10.0)
    check = trigger([0.75, 0.74, 0.76], [tag], rule=quality)
    assert check.status == ev.HOLDING and check.threshold == pytest.approx(0.72)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.floats(min_value=0, max_value=5000), min_size=3, max_size=10),
       st.floats(min_value=0.1, max_value=200))
def test_a_tag_never_fires_a_trigger_that_holds_without_it(values, percent):
    tag = ev.Tag(1, "t", "expected_change", "latency_p95_ms", percent)
    if trigger(values).status != ev.FIRED:
        assert trigger(values, [tag]).status != ev.FIRED


# -- re-asking after a rejection -----------------------------------------------------------------

def test_a_breach_worsened_materially_by_the_percent_of_the_threshold():
    assert ev.worsened("gt", 800, 920, 1120, 25)
    assert not ev.worsened("gt", 800, 920, 1100, 25)
    assert ev.worsened("lt", 0.8, 0.7, 0.45, 25) and not ev.worsened("lt", 0.8, 0.7, 0.6, 25)
    assert not ev.worsened("gt", 800, None, 2000, 25)


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


def test_a_warning_trigger_proposes_the_fallback_and_critical_wins_over_warning():
    rule = ev.Trigger(5, "error_rate", "gt", 0.05, timedelta(minutes=5), 3, "warning")
    warning = trigger([0.1, 0.1, 0.1], rule=rule)
    assert ev.decide(situation(), [MET], [warning]).action == "fallback"
    assert ev.decide(situation(), [MET], [warning, FIRED]).action == "rollback"
    assert ev.decide(situation(state="fallback"), [MET], [warning]).action == "none"


def test_expansion_is_automatic_only_at_tier_1_without_an_approval_point():
    assert ev.decide(situation(tier=1), [MET], [trigger([700] * 3)]).handling == ev.EXECUTE
    assert ev.decide(situation(tier=2), [MET], [trigger([700] * 3)]).handling == ev.GATE
    assert ev.decide(situation(tier=1, next_ring_is_approval_point=True), [MET],
                     [trigger([700] * 3)]).handling == ev.GATE


def test_inconclusive_data_asks_a_person_before_expanding_and_never_rolls_back():
    decision = ev.decide(situation(tier=1), [criterion([])], [trigger([])])
    assert (decision.action, decision.handling) == ("expand", ev.GATE)
    assert "inconclusive" in decision.reason


def test_lost_signals_freeze_expansion():
    decision = ev.decide(situation(tier=1, signals_lost=("error_rate > 0.05 sustained for 30 s",)), [MET],
                         [trigger([700] * 3)])
    assert decision.action == "none" and decision.reason.startswith("signals lost (error_rate")


def test_nothing_happens_before_the_soak_ends_or_while_a_criterion_is_not_met():
    assert ev.decide(situation(soak_complete=False), [MET], [trigger([700] * 3)]).action == "none"
    assert ev.decide(situation(), [criterion([0.5] * 5)], [trigger([700] * 3)]).action == "none"
    assert ev.decide(situation(has_next_ring=False), [MET], [trigger([700] * 3)]).action == "none"
    assert ev.decide(situation(state="paused"), [MET], [trigger([700] * 3)]).action == "none"
