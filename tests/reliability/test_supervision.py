"""Supervision under `make run` (scripts/devserver.py): a worker or beat that dies comes back,
and a Redis restart that makes the worker exit (RELIABILITY.md E5/E6), or leaves it consuming
nothing (restarted by core.worker_watchdog), loses no timer (FLT-05).

One `make run` process tree serves both parts (it takes a while to start). The production
counterpart is deploy/systemd (Restart=always, test_deploy_units.py).
"""

from __future__ import annotations

import os
import signal
import time

import pytest

from approvals.models import ApprovalRequest
from tests.reliability.approval_timers import ask, doubled, short_policy, timer_events
from tests.reliability.processes import answers_ping
from tests.reliability.proctree import descendants
from tests.reliability.waiting import wait_until

pytestmark = [pytest.mark.reliability, pytest.mark.timeout(300)]

TIMERS, DUE_S, REDIS_DOWN_S = 10, 8, 3
STALL_S = 10  # WORKER_STALL_SECONDS: a worker left consuming nothing is restarted well inside the wait
LOG_TAIL = 12_000


def _service_pid(supervisor_pid: int, kind: str) -> int | None:
    """The pid of the supervisor's `celery … worker` or `celery … beat` process (not a pool child)."""
    for pid, cmdline in descendants(supervisor_pid).items():
        try:
            leader = os.getpgid(pid) == pid
        except ProcessLookupError:
            continue
        if "celery" in cmdline and kind in cmdline.split() and leader:
            return pid
    return None


def _replaced(supervisor_pid: int, kind: str, old: int) -> int | None:
    pid = _service_pid(supervisor_pid, kind)
    return pid if pid not in (None, old) else None


def test_make_run_brings_worker_and_beat_back_and_a_redis_restart_loses_no_timer(
        services, private_redis, figures, admin_user, workflow, agent):
    dev = services.devserver(WORKER_STALL_SECONDS=STALL_S)
    try:
        dev.wait_for_output("Ringfence is running at", 180)
        hostname = f"worker@{dev.env['HOST']}-{dev.env['PORT']}"  # as scripts/devserver.py names it

        # -- a killed worker and a killed beat come back --------------------------------------
        worker = wait_until(lambda: _service_pid(dev.pid, "worker"), 30, "the worker is started")
        wait_until(lambda: answers_ping(hostname), 60, "the worker answers a ping", interval=0.2)
        beat = wait_until(lambda: _service_pid(dev.pid, "beat"), 30, "beat is started")

        killed_at = time.monotonic()
        os.killpg(worker, signal.SIGKILL)  # the worker and its pool children, as an OOM kill would
        dev.wait_for_output("worker exited with -9; restarting", 15)
        worker = wait_until(lambda: _replaced(dev.pid, "worker", worker), 30, "a new worker process runs")
        wait_until(lambda: answers_ping(hostname), 60, "the restarted worker answers a ping", interval=0.2)
        worker_back = time.monotonic() - killed_at

        killed_at = time.monotonic()
        os.killpg(beat, signal.SIGKILL)
        dev.wait_for_output("beat exited with -9; restarting", 15)
        beat = wait_until(lambda: _replaced(dev.pid, "beat", beat), 30, "a new beat process runs")
        beat_back = time.monotonic() - killed_at
        figures.report("SUP-01", f"make run: SIGKILLed worker answering pings again after {worker_back:.1f} s, "
                                 f"SIGKILLed beat replaced after {beat_back:.1f} s",
                       worker_back_s=round(worker_back, 1), beat_back_s=round(beat_back, 1))

        # -- FLT-05: Redis restarts while the worker holds countdown messages -----------------
        short_policy(admin_user, workflow, DUE_S, 600)
        requests = [ask(workflow, agent, n) for n in range(TIMERS)]
        wait_until(lambda: private_redis.client().llen("celery") == 0, 10,
                   "the worker took every countdown message off the queue")
        exits_before = dev.output().count("worker exited with")
        private_redis.shutdown_nosave()
        time.sleep(REDIS_DOWN_S)  # the outage's length is the test's input
        private_redis.start()
        back_at = time.time()
        wait_until(lambda: len({e.subject_id for e in timer_events(requests)}) == TIMERS, 90,
                   f"all {TIMERS} timers fired")
        events = timer_events(requests)
        lag = max(e.occurred_at.timestamp() - max(back_at, r.due_at.timestamp())
                  for e in events for r in requests if str(r.pk) == e.subject_id)
        restarts = dev.output().count("worker exited with") - exits_before
        stalls = dev.output().count("worker stalled")
        levels = set(ApprovalRequest.objects.filter(pk__in=[r.pk for r in requests]).values_list("level", flat=True))
        figures.report("FLT-05", f"Redis SHUTDOWN NOSAVE + restart after {REDIS_DOWN_S} s with the worker holding "
                                 f"{TIMERS} countdowns: worker restarts {restarts} (stalled {stalls}), timers lost "
                                 f"{TIMERS - len({e.subject_id for e in events})}, doubled {doubled(events)}, "
                                 f"max lag after Redis returned {lag:.1f} s",
                       worker_restarts=restarts, stalls=stalls, lost=TIMERS - len(events), lag_s=round(lag, 1))
        assert doubled(events) == 0 and levels == {1}
        assert _service_pid(dev.pid, "worker") and _service_pid(dev.pid, "beat")
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n--- make run printed (last {LOG_TAIL} characters) ---\n"
                             f"{dev.output()[-LOG_TAIL:]}") from None
    finally:
        if dev.alive():
            dev.terminate(timeout=40)
    assert "stopped" in dev.output()
