"""The production supervision (deploy/systemd) restarts web, worker and beat whenever they exit,
and gives the worker time for its warm shutdown."""

from __future__ import annotations

import configparser
import shutil
import subprocess
from pathlib import Path

import pytest
from django.conf import settings

pytestmark = [pytest.mark.reliability, pytest.mark.timeout(60)]

UNITS = Path(__file__).resolve().parents[2] / "deploy" / "systemd"
SUPERVISED = ("ringfence-web.service", "ringfence-worker.service", "ringfence-beat.service",
              "ringfence-sequencer.service")


def _unit(name: str) -> configparser.ConfigParser:
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str
    parser.read(UNITS / name)
    return parser


@pytest.mark.parametrize("name", SUPERVISED)
def test_each_long_running_unit_is_restarted_whenever_it_exits(name):
    unit = _unit(name)
    assert unit["Service"]["Restart"] == "always"
    assert unit["Unit"]["StartLimitIntervalSec"] == "0", "systemd must never give up restarting"
    assert unit["Unit"]["PartOf"] == "ringfence.target"
    assert name in _unit("ringfence.target")["Unit"]["Wants"].split()


def test_the_worker_gets_its_warm_shutdown_before_sigkill(figures):
    service = _unit("ringfence-worker.service")["Service"]
    needed = settings.CELERY_WORKER_SOFT_SHUTDOWN_TIMEOUT + settings.CELERY_TASK_TIME_LIMIT
    assert service["KillMode"] == "mixed" and service["KillSignal"] == "SIGTERM"
    assert int(service["TimeoutStopSec"]) > needed
    figures.report("SUP-02", f"deploy/systemd: web, worker, beat Restart=always; worker TimeoutStopSec "
                             f"{service['TimeoutStopSec']} s > soft shutdown + task time limit {needed:.0f} s")


@pytest.mark.skipif(not shutil.which("systemd-analyze"), reason="systemd-analyze is not installed")
def test_systemd_accepts_the_unit_files():
    result = subprocess.run(["systemd-analyze", "verify", *sorted(str(p) for p in UNITS.glob("ringfence*.*")
                                                                   if p.suffix in (".service", ".target"))],
                            capture_output=True, text=True, timeout=30)
    # On a machine without the installation the commands do not exist yet; nothing else may fail.
    problems = [line for line in (result.stdout + result.stderr).splitlines()
                if line.strip() and "is not executable" not in line]
    assert not problems, problems
