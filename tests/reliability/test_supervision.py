"""Supervision under `make run` (scripts/devserver.py): a worker or beat that dies comes back.

The production counterpart is deploy/systemd (Restart=always); the worker's exit on a Redis
restart (RELIABILITY.md E5/E6) is why it matters.
"""

from __future__ import annotations

import os
import signal
import time

import pytest

from governance.celery import app as celery_app
from tests.reliability.proctree import descendants
from tests.reliability.waiting import wait_until

pytestmark = [pytest.mark.reliability, pytest.mark.timeout(240)]


def _service_pid(supervisor_pid: int, kind: str) -> int | None:
    """The pid of the supervisor's `celery … worker` or `celery … beat` process (not a pool child)."""
    for pid, cmdline in descendants(supervisor_pid).items():
        argv = cmdline.split()
        if "celery" in cmdline and kind in argv and os.getpgid(pid) == pid:
            return pid
    return None


def test_make_run_supervisor_restarts_a_killed_worker_and_beat(services, private_redis, figures):
    dev = services.devserver()
    try:
        dev.wait_for_output("Ringfence is running at", 180)
        hostname = f"worker@{dev.env['HOST']}-{dev.env['PORT']}"  # as scripts/devserver.py names it

        def pong() -> bool:
            return bool(celery_app.control.ping(destination=[hostname], timeout=1.0))

        worker = wait_until(lambda: _service_pid(dev.pid, "worker"), 30, "the worker is started")
        wait_until(pong, 60, "the worker answers a ping", interval=0.2)
        beat = wait_until(lambda: _service_pid(dev.pid, "beat"), 30, "beat is started")

        killed_at = time.monotonic()
        os.killpg(worker, signal.SIGKILL)  # the worker and its pool children, as an OOM kill would
        dev.wait_for_output("worker exited with -9; restarting", 15)
        new_worker = wait_until(lambda: (pid := _service_pid(dev.pid, "worker")) not in (None, worker) and pid,
                                30, "a new worker process runs")
        wait_until(pong, 60, "the restarted worker answers a ping", interval=0.2)
        worker_back = time.monotonic() - killed_at

        killed_at = time.monotonic()
        os.killpg(beat, signal.SIGKILL)
        dev.wait_for_output("beat exited with -9; restarting", 15)
        new_beat = wait_until(lambda: (pid := _service_pid(dev.pid, "beat")) not in (None, beat) and pid,
                              30, "a new beat process runs")
        beat_back = time.monotonic() - killed_at
        time.sleep(3)  # the new beat must stay up, not crash-loop
        assert _service_pid(dev.pid, "beat") == new_beat
        assert _service_pid(dev.pid, "worker") == new_worker
        figures.report("SUP-01", f"make run supervisor: SIGKILLed worker answering pings again after "
                                 f"{worker_back:.1f} s, beat restarted after {beat_back:.1f} s",
                       worker_back_s=round(worker_back, 1), beat_back_s=round(beat_back, 1))
    finally:
        if dev.alive():
            dev.terminate(timeout=40)
    assert "stopped" in dev.output()
