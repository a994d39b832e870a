"""Real Celery worker and beat processes for tests, on the test database and the test's Redis.

They run `celery -A config worker` / `beat` exactly as production does (prefork pool, the
project's Celery settings), each in its own session so teardown reaches the pool children, with:

- `DATABASE_URL` pointing at the test database pytest-django created (not the development one),
- `CELERY_BROKER_URL` / `REDIS_URL` = `settings.CELERY_BROKER_URL`, i.e. `RINGFENCE_TEST_REDIS_URL`,
  so engineers on their own Redis DB numbers never see each other's messages,
- the test's `AUDIT_CHECKPOINT_KEY` and a private `RINGFENCE_VAR_DIR`,
- any extra environment you pass (`TIMER_SWEEP_SECONDS`, webhook URLs, ...).

The broker queue is purged before the processes start, so messages published by earlier tests
never run in yours. Tests that use the processes need committed data: mark them
`@pytest.mark.django_db(transaction=True)`.

    from tests.support.celery_processes import celery_processes

    @pytest.mark.django_db(transaction=True)
    def test_timer_fires_once():
        with celery_processes(env={"TIMER_SWEEP_SECONDS": "0.5"}) as celery:
            ...                                   # create rows, publish tasks
            celery.wait_for(lambda: ..., timeout=10, what="the request escalated")
            assert celery.task_results("approvals.tasks.fire_due_timer") == ["escalated"]

Or as fixtures (function scope, or module scope to pay the ~3 s start-up once per module):

    celery_worker_and_beat           # fixture in tests/conftest.py: worker + beat, sweep every 0.5 s
    pytest.fixture(scope="module")(make_celery_fixture(sweep_seconds=0.5, include=["my.probe"]))

`include` modules are imported by the worker at start (`celery worker -I`): use them to register
test-only outcome handlers or tasks inside the worker. `CeleryProcesses.task_results(name)` reads
the worker's log ("Task <name>[<id>] succeeded in …: <result>"), so a test can wait until a given
number of deliveries ran instead of sleeping.
"""

from __future__ import annotations

import ast
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar
from urllib.parse import quote

from django.conf import settings
from django.db import connection

ROOT = Path(__file__).resolve().parents[2]
T = TypeVar("T")
SUCCEEDED = re.compile(r"Task (?P<name>[\w.]+)\[(?P<id>[0-9a-f-]+)\] succeeded in [\d.e-]+s: (?P<result>.*)$")


def wait_until(predicate: Callable[[], T], timeout: float, what: str, interval: float = 0.05) -> T:
    """Poll `predicate` until it returns something truthy; fail naming `what` after `timeout` s."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout:.1f} s waiting until {what}")
        time.sleep(interval)


def current_database_url() -> str:
    """The URL of the database the test runs against (pytest-django's test_* database)."""
    db = connection.settings_dict
    auth = quote(db["USER"], safe="") + (":" + quote(db["PASSWORD"], safe="") if db["PASSWORD"] else "")
    return f"postgres://{auth}@{db['HOST'] or '127.0.0.1'}:{db['PORT'] or 5432}/{quote(db['NAME'], safe='')}"


def purge_broker() -> int:
    """Drop every message waiting in the test's broker queue; returns how many were dropped."""
    from config.celery import app

    with app.connection_for_write() as conn:
        return app.control.purge(connection=conn) or 0


@dataclass
class CeleryProcesses:
    workdir: Path
    worker: subprocess.Popen
    beat: subprocess.Popen | None
    env: dict[str, str] = field(repr=False)

    @property
    def worker_log(self) -> Path:
        return self.workdir / "worker.log"

    @property
    def beat_log(self) -> Path:
        return self.workdir / "beat.log"

    def log(self, which: str = "worker") -> str:
        path = self.worker_log if which == "worker" else self.beat_log
        return path.read_text(errors="replace") if path.exists() else ""

    def task_results(self, name: str) -> list[str]:
        """Results (as logged, repr form) of every successful run of task `name`, in log order."""
        results = []
        for line in self.log().splitlines():
            match = SUCCEEDED.search(line)
            if match and match["name"] == name:
                raw = match["result"].strip()
                try:
                    results.append(ast.literal_eval(raw))
                except (ValueError, SyntaxError):
                    results.append(raw)
        return results

    def wait_for(self, predicate: Callable[[], T], timeout: float, what: str, interval: float = 0.05) -> T:
        self.check_alive()
        try:
            return wait_until(predicate, timeout, what, interval)
        except AssertionError:
            raise AssertionError(f"timed out waiting until {what}\n--- worker log (tail) ---\n"
                                 + "\n".join(self.log().splitlines()[-40:])) from None

    def wait_for_task(self, name: str, count: int = 1, timeout: float = 15) -> list[str]:
        """Wait until task `name` succeeded at least `count` times; returns the results."""
        return self.wait_for(lambda: (r := self.task_results(name)) and len(r) >= count and r,
                             timeout, f"{name} succeeded {count} time(s)")

    def check_alive(self) -> None:
        for name, proc in (("worker", self.worker), ("beat", self.beat)):
            if proc is not None and proc.poll() is not None:
                raise AssertionError(f"celery {name} exited with {proc.returncode}:\n" + self.log(name)[-4000:])

    def stop(self) -> None:
        """Warm shutdown (SIGTERM to both process groups: the worker puts its held countdown
        messages back on the queue); SIGKILL whatever is still running 15 s later."""
        for proc in (self.beat, self.worker):
            if proc is not None and proc.poll() is None:
                _signal_group(proc, signal.SIGTERM)
        for proc in (self.beat, self.worker):
            if proc is None:
                continue
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                _signal_group(proc, signal.SIGKILL)
                proc.wait(timeout=10)
            _signal_group(proc, signal.SIGKILL)  # any pool child left behind


def _signal_group(proc: subprocess.Popen, sig: int) -> None:
    try:
        os.killpg(proc.pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _spawn(argv: list[str], env: dict[str, str], log: Path) -> subprocess.Popen:
    with open(log, "ab") as out:
        return subprocess.Popen(argv, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)


def process_env(workdir: Path, sweep_seconds: float, extra: dict[str, object] | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTEST_", "RINGFENCE_TEST_"))}
    env.update({
        "DJANGO_SETTINGS_MODULE": "config.settings",
        "DATABASE_URL": current_database_url(),
        "CELERY_BROKER_URL": settings.CELERY_BROKER_URL,
        "REDIS_URL": settings.CELERY_BROKER_URL,
        "AUDIT_CHECKPOINT_KEY": settings.AUDIT_CHECKPOINT_KEY,
        "SECRET_KEY": settings.SECRET_KEY,
        "RINGFENCE_TESTING": "1",
        "RINGFENCE_VAR_DIR": str(workdir / "var"),
        "TIMER_SWEEP_SECONDS": str(sweep_seconds),
        "PYTHONPATH": os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep),
        "PYTHONUNBUFFERED": "1",
    })
    env.update({key: str(value) for key, value in (extra or {}).items()})
    return env


@contextmanager
def celery_processes(*, beat: bool = True, sweep_seconds: float = 0.5, concurrency: int = 2,
                     include: list[str] | tuple[str, ...] = (), env: dict[str, object] | None = None,
                     start_timeout: float = 60) -> Iterator[CeleryProcesses]:
    """Start a worker (and beat) against the test database and broker; stop both on exit."""
    workdir = Path(tempfile.mkdtemp(prefix="ringfence-celery-"))
    (workdir / "var").mkdir()
    penv = process_env(workdir, sweep_seconds, env)
    purge_broker()
    worker_argv = [sys.executable, "-m", "celery", "-A", "config", "worker", "--loglevel", "INFO",
                   "--pool", "prefork", "--concurrency", str(concurrency), "--without-gossip", "--without-mingle",
                   "--without-heartbeat", "--hostname", f"test-{uuid.uuid4().hex[:8]}@%h"]
    for module in include:
        worker_argv += ["--include", module]
    worker = _spawn(worker_argv, penv, workdir / "worker.log")
    beat_proc = None
    procs = CeleryProcesses(workdir=workdir, worker=worker, beat=None, env=penv)
    try:
        procs.wait_for(lambda: " ready." in procs.log(), start_timeout, "the celery worker is ready")
        if beat:
            beat_proc = _spawn([sys.executable, "-m", "celery", "-A", "config", "beat", "--loglevel", "INFO",
                                "--schedule", str(workdir / "celerybeat-schedule"), "--max-interval", "1"],
                               penv, workdir / "beat.log")
            procs.beat = beat_proc
            procs.wait_for(lambda: "Starting..." in procs.log("beat"), start_timeout, "celery beat started")
        yield procs
    finally:
        procs.stop()
        shutil.rmtree(workdir, ignore_errors=True)


def make_celery_fixture(**options: object) -> Callable[..., Iterator[CeleryProcesses]]:
    """A fixture function running `celery_processes(**options)`; wrap it with `pytest.fixture(scope=…)`.

    It depends on `django_db_setup`, so the test database exists before the processes connect.
    """

    def fixture(django_db_setup, django_db_blocker) -> Iterator[CeleryProcesses]:
        with django_db_blocker.unblock(), celery_processes(**options) as procs:
            yield procs

    return fixture
