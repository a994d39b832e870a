"""The stall rule of core.worker_watchdog, over observations at given times.

A worker counts as stalled only when, for the whole limit, messages waited in its queues, it held
no task and received none. The watchdog acting on a real worker is tests/reliability/test_worker_stall.py.
"""

from __future__ import annotations

import pytest

from core.worker_watchdog import Stall

LIMIT = 10.0


def watch(observations: list[tuple[float, int | None, int]], received: tuple[float, ...] = ()) -> list[float]:
    """The times at which the rule says "stalled", for (time, waiting, holding) observations."""
    stall, stalled = Stall(LIMIT), []
    for at, waiting, holding in observations:
        for moment in received:
            if moment <= at:
                stall.received(moment)
        if stall.observe(at, waiting=waiting, holding=holding):
            stalled.append(at)
    return stalled


def test_messages_waiting_on_an_idle_worker_for_the_whole_limit_is_a_stall():
    assert watch([(t, 3, 0) for t in range(0, 13, 2)]) == [10, 12]


def test_shorter_than_the_limit_is_not():
    assert watch([(t, 3, 0) for t in range(0, 10, 2)]) == []


@pytest.mark.parametrize(("gap", "why"), [
    ((0, 0), "the queue was empty"),
    ((None, 0), "the broker did not answer"),
    ((3, 1), "the worker held a task"),
])
def test_one_observation_that_is_no_stall_starts_the_count_again(gap, why):
    waiting, holding = gap
    observations = [(0, 3, 0), (4, 3, 0), (6, waiting, holding), (8, 3, 0), (12, 3, 0), (16, 3, 0), (18, 3, 0)]
    assert watch(observations) == [18], why


def test_a_message_received_starts_the_count_again():
    observations = [(t, 3, 0) for t in range(0, 21, 2)]
    assert watch(observations, received=(5.0,)) == [16, 18, 20]


def test_a_message_received_before_the_stall_began_does_not():
    observations = [(t, 3, 0) for t in range(2, 15, 2)]
    assert watch(observations, received=(1.0,)) == [12, 14]
