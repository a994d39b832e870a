"""A worker that stays up but consumes nothing is restarted, and no timer waiting on it is lost
(SUP-03, core.worker_watchdog); a healthy worker is left alone.

The stall is made with Celery's own remote control: `cancel_consumer` makes the worker stop taking
messages from its queue while it keeps running and answering pings, which is how a worker looks
after the broker restarts that leave it consuming nothing (celery/celery#10205). Its supervisor
here restarts it on exit, as `make run` and systemd do.
"""

from __future__ import annotations

import time

import pytest

from core.worker_watchdog import grace_seconds
from tests.reliability.approval_timers import ask, doubled, short_policy, timer_events
from tests.reliability.processes import answers_ping, control
from tests.reliability.proctree import descendants, running
from tests.reliability.waiting import wait_until

pytestmark = [pytest.mark.reliability, pytest.mark.timeout(180)]

STALL_S, HEALTHY_S, TIMERS, DUE_S = 4, 12, 5, 2
HOSTNAME = "worker@reliability"
GRACE_S = grace_seconds()


def _stall(admin_user, workflow, agent) -> tuple[float, list]:
    """The worker stops consuming but keeps running and answering; timers fall due behind it."""
    replies = control("cancel_consumer", HOSTNAME, "celery", reply=True, timeout=5)
    assert replies, "the worker acknowledged cancel_consumer"
    stalled_at = time.monotonic()
    short_policy(admin_user, workflow, DUE_S, 600)
    requests = [ask(workflow, agent, n) for n in range(TIMERS)]
    assert answers_ping(HOSTNAME), "the stalled worker is still up: no exit for a supervisor to see"
    return stalled_at, requests


def _all_fired(requests: list) -> list:
    wait_until(lambda: len({e.subject_id for e in timer_events(requests)}) == TIMERS, 30,
               f"all {TIMERS} timers fired")
    return timer_events(requests)


def test_sup03_a_worker_consuming_nothing_is_restarted_and_its_timers_fire(
        services, figures, admin_user, workflow, agent):
    worker = services.worker(WORKER_STALL_SECONDS=STALL_S)
    worker.supervise()
    services.beat()

    # Healthy: beat's sweeps every second go through it for three stall windows; it stays.
    time.sleep(HEALTHY_S)  # how long the healthy worker is watched is the test's input
    assert worker.restarts == 0 and "worker stalled" not in worker.output()

    stalled_at, requests = _stall(admin_user, workflow, agent)
    worker.wait_for_output("worker stalled", STALL_S + 20)
    detected = time.monotonic() - stalled_at
    wait_until(lambda: worker.restarts >= 1, 40, "the supervisor restarted the stalled worker")
    worker.wait_for_ready()
    restarted = time.monotonic() - stalled_at
    events = _all_fired(requests)
    fired = time.monotonic() - stalled_at
    figures.report("SUP-03", f"worker consuming nothing (stall limit {STALL_S} s): seen stalled after "
                             f"{detected:.1f} s, running again after {restarted:.1f} s, {TIMERS}/{TIMERS} timers "
                             f"fired by {fired:.1f} s, doubled {doubled(events)}; healthy for {HEALTHY_S} s: "
                             f"0 restarts",
                   detected_s=round(detected, 1), restarted_s=round(restarted, 1), fired_s=round(fired, 1))
    assert worker.restarts == 1 and doubled(events) == 0
    assert "worker stalled" in worker.output() and "still running" not in worker.output()


def test_sup03_a_stalled_worker_deaf_to_sigterm_is_ended_with_its_pool(
        services, figures, admin_user, workflow, agent):
    """A stalled worker whose warm shutdown never ends is killed, pool children and all, after the
    grace period (soft shutdown timeout + 10 s). No supervisor here until it is gone, so what ends
    the pool is the watchdog; then it is started again, as a supervisor would."""
    worker = services.worker(WORKER_STALL_SECONDS=STALL_S, include=("tests.reliability.deaf_to_sigterm",))
    services.beat()
    pool = set(descendants(worker.pid))
    assert pool, "the prefork worker has pool children"

    stalled_at, requests = _stall(admin_user, workflow, agent)
    worker.wait_for_output("worker stalled", STALL_S + 20)
    code = worker.wait_exit(GRACE_S + 15)
    ended = time.monotonic() - stalled_at
    wait_until(lambda: not any(running(pid) for pid in pool), 5, "the pool children are gone")
    worker.start().wait_for_ready()
    events = _all_fired(requests)
    fired = time.monotonic() - stalled_at
    figures.report("SUP-03", f"stalled worker ignoring SIGTERM: ended after {ended:.1f} s ({GRACE_S:.0f} s grace) "
                             f"with its {len(pool)} pool children; started again, {TIMERS}/{TIMERS} timers fired by "
                             f"{fired:.1f} s, doubled {doubled(events)}",
                   ended_s=round(ended, 1), fired_s=round(fired, 1))
    assert code == -9, "the worker ended its own process group with SIGKILL"
    assert "still running" in worker.output() and doubled(events) == 0
