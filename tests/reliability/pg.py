"""A private PostgreSQL cluster on a loopback port, for faults the shared server must never see.

`initdb` into a temporary directory, `pg_ctl start` on a free 127.0.0.1 port, and the
operations the fault tests need: stop (immediate or fast), start, freeze/thaw (SIGSTOP/SIGCONT
of the postmaster and every backend), and terminating one backend. PostgreSQL refuses to run
as root, so as root the cluster belongs to the `postgres` OS user.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
from pathlib import Path

import psycopg

from tests.reliability.proctree import children
from tests.reliability.waiting import free_port, wait_until

SUPERUSER = "ringfence"


def _bindir() -> Path:
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=lambda p: int(p.split("/")[-2]))
    if candidates:
        return Path(candidates[-1])
    initdb = shutil.which("initdb")
    if initdb:
        return Path(initdb).parent
    raise RuntimeError("PostgreSQL server binaries (initdb, pg_ctl) not found; install Debian's postgresql")


class PrivateCluster:
    def __init__(self, dbname: str) -> None:
        self.bindir = _bindir()
        self.dbname = dbname
        self.root = Path(tempfile.mkdtemp(prefix="ringfence-pg-"))
        self.data = self.root / "data"
        self.log = self.root / "postgres.log"
        self.port = free_port()
        self.frozen: list[int] = []
        self._as_owner: list[str] = []
        if os.geteuid() == 0:
            owner = pwd.getpwnam("postgres")
            os.chown(self.root, owner.pw_uid, owner.pw_gid)
            self._as_owner = ["runuser", "-u", "postgres", "--"]

    # -- lifecycle ---------------------------------------------------------------------------
    def _run(self, *argv: str, timeout: float = 60) -> None:
        subprocess.run([*self._as_owner, str(self.bindir / argv[0]), *argv[1:]], check=True, timeout=timeout,
                       stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)

    def init(self) -> None:
        self._run("initdb", "-D", str(self.data), "-U", SUPERUSER, "--auth=trust", "-E", "UTF8", "--no-sync")
        with open(self.data / "postgresql.conf", "a") as conf:
            conf.write(
                f"\nport = {self.port}\nlisten_addresses = '127.0.0.1'\nunix_socket_directories = '{self.root}'\n"
                # The OS survives every fault here, so skipping fsync loses nothing a test checks;
                # synchronous_commit stays on: a committed transaction must survive an immediate stop.
                "fsync = off\nfull_page_writes = off\nmax_connections = 200\n"
            )
        self.start()
        with self.admin() as conn:
            conn.execute(f'CREATE DATABASE "{self.dbname}"')

    def start(self) -> None:
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.log), "-w", "-t", "60", "start")

    def stop(self, mode: str = "fast") -> None:
        """`immediate` is a crash (no checkpoint, clients cut off); `fast` rolls back and closes cleanly."""
        assert mode in ("immediate", "fast", "smart")
        self.thaw()
        self._run("pg_ctl", "-D", str(self.data), "-m", mode, "-w", "-t", "60", "stop")

    def running(self) -> bool:
        return self.postmaster_pid() is not None

    def postmaster_pid(self) -> int | None:
        try:
            pid = int((self.data / "postmaster.pid").read_text().split("\n", 1)[0])
            os.kill(pid, 0)
            return pid
        except (OSError, ValueError):
            return None

    def destroy(self) -> None:
        if self.running():
            try:
                self.stop("immediate")
            except subprocess.SubprocessError:
                pid = self.postmaster_pid()
                if pid:
                    os.kill(pid, signal.SIGKILL)
        shutil.rmtree(self.root, ignore_errors=True)

    # -- faults -------------------------------------------------------------------------------
    def freeze(self) -> int:
        """SIGSTOP the postmaster first (no new backends), then every child. Returns processes stopped."""
        pid = self.postmaster_pid()
        assert pid, "the cluster is not running"
        os.kill(pid, signal.SIGSTOP)
        self.frozen = [pid]
        for child in children(pid):
            try:
                os.kill(child, signal.SIGSTOP)
                self.frozen.append(child)
            except ProcessLookupError:
                pass
        return len(self.frozen)

    def thaw(self) -> None:
        for pid in reversed(self.frozen):
            try:
                os.kill(pid, signal.SIGCONT)
            except ProcessLookupError:
                pass
        self.frozen = []

    def kill_backend(self, pid: int) -> bool:
        with self.admin() as conn:
            return bool(conn.execute("SELECT pg_terminate_backend(%s)", [pid]).fetchone()[0])

    # -- access -------------------------------------------------------------------------------
    def admin(self, dbname: str = "postgres", **kwargs) -> psycopg.Connection:
        return psycopg.connect(**{"host": "127.0.0.1", "port": self.port, "user": SUPERUSER, "dbname": dbname,
                                  "autocommit": True, "connect_timeout": 5, **kwargs})

    def wait_ready(self, timeout: float = 30) -> None:
        def ready() -> bool:
            try:
                with self.admin(self.dbname) as conn:
                    conn.execute("SELECT 1")
                return True
            except psycopg.OperationalError:
                return False

        wait_until(ready, timeout, "private PostgreSQL accepts connections")
