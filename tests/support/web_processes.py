"""A real ASGI web server for tests: gunicorn with uvicorn workers, as the systemd unit runs it, on a
free port, against the test database and this run's Redis (the environment of celery_processes).

    from tests.support.web_processes import asgi_server

    @pytest.mark.django_db(transaction=True)
    def test_something():
        with asgi_server(workers=1, env={"API_LONG_POLL_INTERVAL_SECONDS": 30}) as server:
            status, body, elapsed = server.request("GET", "/api/v1/approvals/1?wait=5", token=raw)
"""

from __future__ import annotations

import http.client
import json
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.support.celery_processes import ROOT, _signal_group, _spawn, process_env, wait_until


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class WebServer:
    port: int
    proc: subprocess.Popen
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def request(self, method: str, path: str, *, token: str | None = None, body: Any = None,
                headers: dict[str, str] | None = None, timeout: float = 90) -> tuple[int, Any, float]:
        """One request on a connection of its own: (status, JSON body, seconds it took)."""
        sent = {"Content-Type": "application/json", **({"Authorization": f"Bearer {token}"} if token else {}),
                **(headers or {})}
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        started = time.monotonic()
        try:
            connection.request(method, path, body=None if body is None else json.dumps(body), headers=sent)
            response = connection.getresponse()
            raw = response.read()
        finally:
            connection.close()
        return response.status, json.loads(raw) if raw else None, time.monotonic() - started


def _answers(port: int) -> bool:
    try:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
        connection.request("GET", "/api/v1/openapi.json")
        ok = connection.getresponse().status == 200
        connection.close()
        return ok
    except OSError:
        return False


@contextmanager
def asgi_server(*, workers: int = 1, env: dict[str, object] | None = None,
                start_timeout: float = 60) -> Iterator[WebServer]:
    """Start gunicorn (uvicorn workers) on the test database; stop it (and its workers) on exit."""
    workdir = Path(tempfile.mkdtemp(prefix="ringfence-web-"))
    (workdir / "var").mkdir()
    port = free_port()
    penv = process_env(workdir, 5.0, {"ALLOWED_HOSTS": "127.0.0.1,localhost", **(env or {})})
    argv = [sys.executable, "-m", "gunicorn", "config.asgi:application", "--worker-class",
            "uvicorn_worker.UvicornWorker", "--workers", str(workers), "--bind", f"127.0.0.1:{port}",
            "--graceful-timeout", "5", "--timeout", "60", "--chdir", str(ROOT)]
    proc = _spawn(argv, penv, workdir / "web.log")
    server = WebServer(port, proc, workdir / "web.log")
    try:
        wait_until(lambda: proc.poll() is not None or _answers(port), start_timeout, "the web server answers")
        if proc.poll() is not None:
            raise AssertionError(f"gunicorn exited with {proc.returncode}:\n{server.log()[-4000:]}")
        yield server
    finally:
        _signal_group(proc, signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            _signal_group(proc, signal.SIGKILL)
            proc.wait(timeout=10)
        _signal_group(proc, signal.SIGKILL)  # any worker left behind
        shutil.rmtree(workdir, ignore_errors=True)
