"""Ringfence's own processes (Celery worker and beat, the web server, `make run`'s supervisor) as
subprocesses pointed at the private services, configured the production way: environment only.

Each process leads its own session, so `os.killpg(pid, SIGKILL)` reaches a worker's pool
children too, and teardown never leaves an orphan behind.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from tests.reliability.http import HttpResponse, request
from tests.reliability.proctree import descendants
from tests.reliability.waiting import free_port
from tests.support.celery_processes import ROOT, process_env, wait_until

PY = sys.executable
SWEEP_SECONDS = 1  # TIMER_SWEEP_SECONDS of the processes (production: 5)


def control(command: str, hostname: str, *args: object, **kwargs: object) -> object:
    """Celery's remote `command` to the worker `hostname`, sent on a connection of its own: one from
    this process's pool may predate a Redis restart an earlier test made, and fail instead."""
    from config.celery import app

    with app.connection_for_write() as conn:
        return getattr(app.control, command)(*args, destination=[hostname], connection=conn, **kwargs)


def answers_ping(hostname: str) -> bool:
    return bool(control("ping", hostname, timeout=1.0))


class ServiceProcess:
    def __init__(self, name: str, argv: list[str], env: dict[str, str], log: Path) -> None:
        self.name, self.argv, self.env, self.log = name, argv, env, log
        self.proc: subprocess.Popen | None = None
        self.starts = self.restarts = 0
        self._started_at = 0
        self._supervising: threading.Event | None = None

    def start(self) -> ServiceProcess:
        self._started_at = len(self.output())
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(self.argv, cwd=ROOT, env=self.env, stdout=out, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, start_new_session=True)
        self.starts += 1
        return self

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def signal_group(self, sig: int) -> None:
        try:
            os.killpg(self.proc.pid, sig)
        except ProcessLookupError:
            pass

    def kill(self) -> None:
        """SIGKILL the whole process group (a worker and its pool children, or a crash)."""
        self.signal_group(signal.SIGKILL)
        self.proc.wait(timeout=15)

    def terminate(self, timeout: float = 30) -> int:
        """SIGTERM (Celery's warm shutdown) and wait for the exit; SIGKILL if it does not come."""
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError(f"{self.name} did not stop within {timeout} s of SIGTERM") from None

    def wait_exit(self, timeout: float) -> int:
        return self.proc.wait(timeout=timeout)

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def wait_for_output(self, text: str, timeout: float, after: int = 0) -> None:
        wait_until(lambda: text in self.output()[after:], timeout, f"{self.name} prints {text!r}", interval=0.1)

    def wait_for_ready(self, timeout: float = 60) -> None:
        """Until this run (the latest start) says it is ready: a worker's "ready.", beat's "Starting..."."""
        self.wait_for_output("beat: Starting..." if "beat" in self.argv else " ready.", timeout, after=self._started_at)

    def supervise(self, *, delay: float = 1.0, max_restarts: int = 20) -> None:
        """Restart the process whenever it exits, as `make run` and systemd do (bounded in count)."""
        self.restarts = 0
        self._supervising = threading.Event()

        def loop() -> None:
            while not self._supervising.wait(0.2):
                if self.proc.poll() is not None and self.restarts < max_restarts:
                    self.signal_group(signal.SIGKILL)  # pool children the exit left behind
                    time.sleep(delay)
                    self.restarts += 1
                    self.start()

        threading.Thread(target=loop, name=f"supervise-{self.name}", daemon=True).start()

    def cleanup(self) -> None:
        """SIGKILL the process, its group, and every process it started in a session of its own."""
        if self._supervising is not None:
            self._supervising.set()
        if self.proc is not None:
            for pid in descendants(self.proc.pid):
                for kill in (os.killpg, os.kill):
                    try:
                        kill(pid, signal.SIGKILL)
                    except (ProcessLookupError, PermissionError):
                        pass
            self.signal_group(signal.SIGKILL)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                pass


class Services:
    """Starts processes against the database and Redis the test process uses (the private ones),
    with the environment tests/support/celery_processes.py gives real workers, plus short settings."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.var_dir = workdir / "var"
        self.var_dir.mkdir(parents=True, exist_ok=True)
        self.task_log = workdir / "task-runs.jsonl"
        self.processes: list[ServiceProcess] = []
        self.base_env = process_env(workdir, SWEEP_SECONDS, {
            "RINGFENCE_TASK_LOG": self.task_log,
            # Short settings so faults play out in seconds (RELIABILITY.md §4.2 has production values).
            "CELERY_VISIBILITY_TIMEOUT": 30,
            "DATABASE_CONNECT_TIMEOUT": 2,
            "LOG_LEVEL": "INFO",
            "EMAIL_BACKEND": "django.core.mail.backends.filebased.EmailBackend",  # into var/mail
        })

    def env(self, **overrides: object) -> dict[str, str]:
        return {**self.base_env, **{key: str(value) for key, value in overrides.items()}}

    def _spawn(self, name: str, argv: list[str], env: dict[str, object]) -> ServiceProcess:
        process = ServiceProcess(name, argv, self.env(**env), self.workdir / f"{name}.log")
        self.processes.append(process)
        return process.start()

    def worker(self, name: str = "worker", *, concurrency: int = 2, ready: bool = True,
               include: tuple[str, ...] = (), **env: object) -> ServiceProcess:
        """`celery -A config worker` as production runs it, plus the task-run record (celery_probe)
        and any fault module in `include`."""
        process = self._spawn(name, [
            PY, "-m", "celery", "-A", "config", "worker", "--loglevel", "INFO", "--pool", "prefork",
            "--concurrency", str(concurrency), "--hostname", f"{name}@reliability", "--without-gossip",
            "--without-mingle", "--include", ",".join(("tests.reliability.celery_probe", *include)),
        ], env)
        if ready:
            process.wait_for_ready()
        return process

    def beat(self, name: str = "beat", *, ready: bool = True, **env: object) -> ServiceProcess:
        process = self._spawn(name, [
            PY, "-m", "celery", "-A", "config", "beat", "--loglevel", "INFO",
            "--schedule", str(self.workdir / f"{name}-schedule"), "--max-interval", "1",
        ], env)
        if ready:
            process.wait_for_ready()
        return process

    def web(self, name: str = "web", *, workers: int = 2, ready: bool = True, **env: object) -> WebServer:
        port = free_port()
        process = self._spawn(name, [
            PY, "-m", "gunicorn", "config.wsgi:application", "--bind", f"127.0.0.1:{port}",
            "--workers", str(workers), "--timeout", "60", "--graceful-timeout", "5", "--access-logfile", "-",
        ], {"ALLOWED_HOSTS": "127.0.0.1,localhost", **env})
        server = WebServer(process, f"http://127.0.0.1:{port}")
        if ready:
            server.wait_ready()
        return server

    def devserver(self, name: str = "devserver", **env: object) -> ServiceProcess:
        """`make run`'s process tree: migrate, seed, web + worker + beat under its supervisor."""
        return self._spawn(name, [PY, str(ROOT / "scripts" / "devserver.py")],
                           {"HOST": "127.0.0.1", "PORT": free_port(), **env})

    def task_runs(self, task: str | None = None, event: str = "start") -> list[dict]:
        if not self.task_log.exists():
            return []
        runs = [json.loads(line) for line in self.task_log.read_text().splitlines() if line.strip()]
        return [r for r in runs if r["event"] == event and (task is None or r["task"] == task)]

    def cleanup(self) -> None:
        for process in reversed(self.processes):
            process.cleanup()


class WebServer:
    def __init__(self, process: ServiceProcess, base_url: str) -> None:
        self.process, self.base_url = process, base_url
        self.port = int(base_url.rsplit(":", 1)[1])

    def request(self, method: str, path: str, **kwargs) -> HttpResponse:
        return request(method, "127.0.0.1", self.port, path, **kwargs)

    def wait_ready(self, timeout: float = 60) -> None:
        def answers() -> bool:
            assert self.process.alive(), f"the web server exited:\n{self.process.output()[-3000:]}"
            try:
                return self.request("GET", "/accounts/login/", timeout=2).status == 200
            except OSError:
                return False

        wait_until(answers, timeout, "the web server answers", interval=0.2)
