"""A private Redis on a loopback port without persistence: a restart empties it, as a crash would."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
from pathlib import Path

import redis

from tests.reliability.waiting import free_port, wait_until


class PrivateRedis:
    def __init__(self) -> None:
        self.binary = shutil.which("redis-server")
        if not self.binary:
            raise RuntimeError("redis-server not found; install Debian's redis-server")
        self.root = Path(tempfile.mkdtemp(prefix="ringfence-redis-"))
        self.port = free_port()
        self.proc: subprocess.Popen | None = None
        self.frozen = False

    def url(self, db: int = 0) -> str:
        return f"redis://127.0.0.1:{self.port}/{db}"

    def client(self, **kwargs) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=5, socket_connect_timeout=5, **kwargs)

    def start(self) -> None:
        assert not self.running(), "the private Redis is already running"
        self.proc = subprocess.Popen(
            [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--maxmemory-policy", "noeviction", "--dir", str(self.root), "--logfile", str(self.root / "redis.log")],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
        )
        wait_until(self._pong, 15, "the private Redis answers PING")

    def _pong(self) -> bool:
        try:
            return bool(self.client(socket_keepalive=False).ping())
        except redis.RedisError:
            return False

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def shutdown_nosave(self) -> None:
        """`SHUTDOWN NOSAVE`: every queued and unacknowledged message is gone."""
        self.thaw()
        try:
            self.client().shutdown(nosave=True)
        except redis.ConnectionError:
            pass  # the server closes the connection while it exits
        self.proc.wait(timeout=15)

    def restart(self) -> None:
        if self.running():
            self.shutdown_nosave()
        self.start()

    def freeze(self) -> None:
        os.kill(self.proc.pid, signal.SIGSTOP)
        self.frozen = True

    def thaw(self) -> None:
        if self.frozen and self.running():
            os.kill(self.proc.pid, signal.SIGCONT)
        self.frozen = False

    def destroy(self) -> None:
        if self.proc and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGCONT)
            self.proc.kill()
            self.proc.wait(timeout=15)
        shutil.rmtree(self.root, ignore_errors=True)
