#!/usr/bin/env python3
"""Waiting agents cost no worker: dispatch latency with 0 and with 100 agents long-polling.

    .venv/bin/python bench/waits.py [--workers 4] [--waiters 100] [--requests 250] [--clients 2] [--pairs 2]

Serves Ringfence as the systemd unit does (gunicorn, uvicorn workers, 4 of them) on a scratch
database (ringfence_bench_waits, created, migrated and dropped here) and its own Redis database
(RINGFENCE_BENCH_REDIS_URL, default redis://127.0.0.1:6379/13, emptied before and after). Each
phase times `--clients` closed-loop clients dispatching an allowed action `--requests` times each:
first with no one waiting, then while `--waiters` agents each long-poll their own pending approval
(`GET /api/v1/approvals/{id}?wait=25`, asked again whenever it answers still pending; their first
waits are spread over the 25 s, as agents arrive at different times). The waiters'
approvals are then cancelled one by one, which wakes them: the time from each cancel to its waiter's
answer is printed too (median and last), with the threads and database connections the workers held
while the agents waited. Phases alternate `--pairs` times; prints p50/p99 per phase, overall, and the ratio of
the p99s (goal: ≤ 2×). Before this design a sync gunicorn worker was held by each waiting agent:
with 4 agents waiting on the 4 workers, a dispatch took 19 s.
"""

from __future__ import annotations

import argparse
import base64
import http.client
import json
import math
import os
import secrets
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from export import log, scratch_database  # noqa: E402  (bench/ is the script's directory)

REDIS_URL = os.environ.get("RINGFENCE_BENCH_REDIS_URL", "redis://127.0.0.1:6379/13")
WAIT = 25  # seconds per long-poll, the server's default cap


def percentile(values: list[float], pct: float) -> float:
    ordered = sorted(values)
    return ordered[max(0, math.ceil(pct / 100 * len(ordered)) - 1)]


def seed() -> str:
    """A tier-2 workflow with a low-risk action (allowed) and a high-risk one (pending); a token."""
    from django.contrib.auth.models import Group, User

    from governance import services
    from governance.permissions import Role

    admin = User.objects.create_user("bench-admin", is_staff=True)
    admin.groups.add(Group.objects.get(name=Role.ADMINISTRATOR))
    workflow = services.create_workflow(actor=admin, slug="refund-agent", name="Refund agent", autonomy_tier=2,
                                        business_days=[0, 1, 2, 3, 4, 5, 6], timezone="UTC")
    services.define_action(workflow.pk, actor=admin, name="send_receipt", risk="low")
    services.define_action(workflow.pk, actor=admin, name="refund_customer", risk="high")
    owner = User.objects.create_user("bench-owner")
    account = services.create_service_account(actor=admin, name="bench-bot", owner=owner, workflows=[workflow])
    return services.issue_token(account.pk, actor=admin).raw


class Api:
    def __init__(self, port: int, token: str) -> None:
        self.port, self.token = port, token
        self.connection: http.client.HTTPConnection | None = None

    def call(self, method: str, path: str, body: dict | None = None, timeout: float = 60) -> tuple[int, dict]:
        """On a kept-alive connection of this object's own (opened again, once, if the server closed it)."""
        headers = {"Authorization": f"Bearer {self.token}", "Content-Type": "application/json"}
        if method == "POST":
            headers["Idempotency-Key"] = uuid.uuid4().hex  # the same on the retry
        for attempt in (1, 2):
            reused = self.connection is not None
            if self.connection is None:
                self.connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
            try:
                self.connection.request(method, path, body=None if body is None else json.dumps(body),
                                        headers=headers)
                response = self.connection.getresponse()
                return response.status, json.loads(response.read() or b"null")
            except (OSError, http.client.HTTPException):
                self.connection.close()
                self.connection = None
                if not reused or attempt == 2:
                    raise
        raise AssertionError("unreachable")

    def dispatch(self, action: str) -> dict:
        status, body = self.call("POST", "/api/v1/dispatch", {"workflow": "refund-agent", "action": action})
        assert status == 200, (status, body)
        return body


class Waiter(threading.Thread):
    """An agent long-polling its approval until it closes."""

    def __init__(self, port: int, token: str, approval_id: int, sent: threading.Semaphore, first_wait: float) -> None:
        super().__init__(daemon=True)
        self.api, self.approval_id, self.sent = Api(port, token), approval_id, sent
        self.first_wait = first_wait
        self.answered_at: float | None = None
        self.polls = 0
        self.failure = ""

    def run(self) -> None:
        try:
            while True:
                if self.polls == 0:
                    self.api.connection = http.client.HTTPConnection("127.0.0.1", self.api.port, timeout=WAIT + 30)
                    self.api.connection.connect()
                    self.sent.release()
                wait = self.first_wait if self.polls == 0 else WAIT
                self.polls += 1
                status, body = self.api.call("GET", f"/api/v1/approvals/{self.approval_id}?wait={wait:g}")
                if status != 200:
                    self.failure = f"{status} {body}"
                    return
                if body["state"] != "pending":
                    self.answered_at = time.monotonic()
                    return
        except Exception as exc:  # noqa: BLE001 - reported below
            self.failure = repr(exc)


def dispatch_phase(port: int, token: str, clients: int, requests: int) -> list[float]:
    latencies: list[float] = []
    lock = threading.Lock()

    def client() -> None:
        api, mine = Api(port, token), []
        for _ in range(requests):
            started = time.perf_counter()
            answer = api.dispatch("send_receipt")
            mine.append(time.perf_counter() - started)
            assert answer["decision"] == "allow", answer
        with lock:
            latencies.extend(mine)

    threads = [threading.Thread(target=client) for _ in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return latencies


def worker_pids(master: int) -> list[int]:
    return [int(pid) for pid in Path(f"/proc/{master}/task/{master}/children").read_text().split()]


def cpu_ticks(pids: list[int]) -> int:
    total = 0
    for pid in pids:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])
    return total


def threads_of(pids: list[int]) -> int:
    return sum(int(line.split()[1]) for pid in pids for line in Path(f"/proc/{pid}/status").read_text().splitlines()
               if line.startswith("Threads:"))


def settle(pids: list[int], timeout: float = 30) -> None:
    """Until the workers are all but idle (≤ 5 % of a core over 1 s): every waiter has been read and
    waits, leaving only the steady trickle of long-polls asked again."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        before = cpu_ticks(pids)
        time.sleep(1.0)
        if cpu_ticks(pids) - before <= 5:
            return


def database_connections(name: str) -> int:
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("SELECT count(*) FROM pg_stat_activity WHERE datname = %s AND pid <> pg_backend_pid()", [name])
        return cursor.fetchone()[0]


def waiting_phase(port: int, token: str, args: argparse.Namespace, pids: list[int], db_name: str) -> dict:
    """Dispatch while `args.waiters` agents wait; then cancel their approvals and time the wake-ups."""
    api = Api(port, token)
    approvals = [api.dispatch("refund_customer")["approval_id"] for _ in range(args.waiters)]
    sent = threading.Semaphore(0)
    # Agents arrive at different times: their long-polls run out (and are asked again) spread over
    # the 25 s, not all in the same instant.
    waiters = [Waiter(port, token, approval_id, sent, first_wait=WAIT * (i + 1) / len(approvals))
               for i, approval_id in enumerate(approvals)]
    for waiter in waiters:
        waiter.start()
    for _ in waiters:
        if not sent.acquire(timeout=60):
            raise SystemExit("the waiters could not all connect")
    settle(pids)
    held = {"threads": threads_of(pids), "db_connections": database_connections(db_name)}
    latencies = dispatch_phase(port, token, args.clients, args.requests)
    answered_early = sum(w.answered_at is not None or bool(w.failure) for w in waiters)
    cancelled_at = {}
    for approval_id in approvals:
        status, body = api.call("POST", f"/api/v1/approvals/{approval_id}/cancel", {"reason": "benchmark done"})
        assert status == 200, (status, body)
        cancelled_at[approval_id] = time.monotonic()
    for waiter in waiters:
        waiter.join(WAIT + 30)
    failures = [w.failure for w in waiters if w.failure]
    if failures or answered_early:
        raise SystemExit(f"{len(failures)} waiters failed ({failures[:3]}), {answered_early} answered early")
    lags = [w.answered_at - cancelled_at[w.approval_id] for w in waiters]
    return {"latencies": latencies, "wake_p50": statistics.median(lags), "wake_max": max(lags),
            "polls": max(w.polls for w in waiters), **held}


def start_server(url: str, workers: int, var_dir: str) -> tuple[subprocess.Popen, int, Path]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RINGFENCE_", "DATABASE_", "CELERY_", "REDIS_"))}
    env.update(DJANGO_SETTINGS_MODULE="config.settings", PYTHONPATH=str(ROOT), DATABASE_URL=url, REDIS_URL=REDIS_URL,
               CELERY_BROKER_URL=REDIS_URL, SECRET_KEY=os.environ["SECRET_KEY"],
               AUDIT_CHECKPOINT_KEY=os.environ["AUDIT_CHECKPOINT_KEY"],
               ROLLOUT_WEBHOOK_SECRET=os.environ["ROLLOUT_WEBHOOK_SECRET"], RINGFENCE_VAR_DIR=var_dir,
               ALLOWED_HOSTS="127.0.0.1", API_RATE_LIMIT_REQUESTS="1000000000", LOG_LEVEL="WARNING",
               DATABASE_STATEMENT_TIMEOUT_MS="0")
    env["AUDIT_SIGNING_KEY"] = os.environ["AUDIT_SIGNING_KEY"]
    log_path = Path(var_dir) / "web.log"
    with open(log_path, "ab") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "gunicorn", "config.asgi:application", "--worker-class",
             "uvicorn_worker.UvicornWorker", "--workers", str(workers), "--bind", f"127.0.0.1:{port}",
             "--timeout", "60", "--graceful-timeout", "5"],
            cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 60
    while True:
        try:
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            connection.request("GET", "/api/v1/openapi.json")
            if connection.getresponse().status == 200:
                break
        except OSError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            raise SystemExit(f"gunicorn did not start:\n{log_path.read_text()[-3000:]}")
        time.sleep(0.2)
    while len(worker_pids(proc.pid)) < workers and time.monotonic() < deadline:
        time.sleep(0.2)
    return proc, port, log_path


def stop_server(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    except ProcessLookupError:
        pass


def summary(latencies: list[float]) -> str:
    return (f"p50 {statistics.median(latencies) * 1000:7.1f} ms   p99 {percentile(latencies, 99) * 1000:7.1f} ms   "
            f"({len(latencies)} dispatches)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workers", type=int, default=4, help="gunicorn (uvicorn) workers; the systemd unit runs 4")
    parser.add_argument("--waiters", type=int, default=100)
    parser.add_argument("--requests", type=int, default=250, help="dispatches per client per phase")
    parser.add_argument("--clients", type=int, default=2, help="closed-loop dispatch clients")
    parser.add_argument("--pairs", type=int, default=2, help="times the two phases alternate")
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # stopped from outside: still clean up below

    import redis

    broker = redis.Redis.from_url(REDIS_URL)
    if broker.dbsize():
        log(f"{REDIS_URL} holds {broker.dbsize()} keys; emptying it (it is this benchmark's own database)")
    broker.flushdb()
    var_dir = tempfile.mkdtemp(prefix="ringfence-bench-waits-")
    os.environ.setdefault("SECRET_KEY", secrets.token_urlsafe(50))
    os.environ.setdefault("AUDIT_CHECKPOINT_KEY", secrets.token_hex(32))
    os.environ.setdefault("ROLLOUT_WEBHOOK_SECRET", secrets.token_hex(32))
    os.environ.setdefault("AUDIT_SIGNING_KEY", base64.b64encode(secrets.token_bytes(32)).decode())
    os.environ["REDIS_URL"] = os.environ["CELERY_BROKER_URL"] = REDIS_URL
    proc = None
    try:
        with scratch_database("ringfence_bench_waits") as url:
            token = seed()
            proc, port, log_path = start_server(url, args.workers, var_dir)
            pids = worker_pids(proc.pid)
            log(f"gunicorn + uvicorn workers: {args.workers}; {args.clients} dispatch clients × {args.requests} "
                f"per phase; {args.waiters} waiters long-polling ?wait={WAIT}")
            dispatch_phase(port, token, args.clients, 20)  # warm up every worker
            idle: list[float] = []
            busy: list[float] = []
            for pair in range(1, args.pairs + 1):
                settle(pids)
                phase = dispatch_phase(port, token, args.clients, args.requests)
                idle += phase
                log(f"pair {pair}   0 waiting: {summary(phase)}")
                waited = waiting_phase(port, token, args, pids, "ringfence_bench_waits")
                busy += waited["latencies"]
                log(f"pair {pair} {args.waiters:>3} waiting: {summary(waited['latencies'])}   worker threads "
                    f"{waited['threads']}, database connections {waited['db_connections']} while waiting; "
                    f"answered {waited['wake_p50'] * 1000:.0f} ms (median), {waited['wake_max'] * 1000:.0f} ms "
                    f"(last) after their approval was cancelled; long-polls per waiter ≤ {waited['polls']}")
            ratio_p99 = percentile(busy, 99) / percentile(idle, 99)
            ratio_p50 = statistics.median(busy) / statistics.median(idle)
            log(f"overall   0 waiting: {summary(idle)}")
            log(f"overall {args.waiters:>3} waiting: {summary(busy)}")
            log(f"ratio with {args.waiters} waiting / without: p50 {ratio_p50:.2f}×, p99 {ratio_p99:.2f}× "
                f"(goal p99 ≤ 2×: {'met' if ratio_p99 <= 2 else 'NOT met'})")
            stop_server(proc)
            proc = None
            warnings = [line for line in log_path.read_text(errors="replace").splitlines() if "WARNING" in line]
            if warnings:
                log(f"server warnings ({len(warnings)}), the last: {warnings[-1]}")
    finally:
        if proc is not None:
            stop_server(proc)
        broker.flushdb()
        broker.close()
        shutil.rmtree(var_dir, ignore_errors=True)


if __name__ == "__main__":
    main()
