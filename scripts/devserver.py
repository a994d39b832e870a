#!/usr/bin/env python3
"""`make run`: migrate, seed the demo, then run web (uvicorn) + Celery worker + beat as one process tree.

A small supervisor restarts the worker or beat when either dies (Celery's worker can exit on a
broker restart); Ctrl-C stops everything. Configuration comes from the environment, as in
production; with nothing set it is the zero-setup mode (SQLite + filesystem broker in var/).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from core import zero_setup  # noqa: E402  (standard library only; runs before Django)

PY = sys.executable
HOST = os.environ.get("HOST", "127.0.0.1")
PORT = os.environ.get("PORT", "8000")
RESTART_DELAY = 2.0


def manage(*args: str) -> None:
    subprocess.run([PY, "manage.py", *args], cwd=ROOT, check=True)


def start(name: str, argv: list[str]) -> subprocess.Popen:
    # Each child leads its own process group so a stop reaches its pool children too.
    return subprocess.Popen(argv, cwd=ROOT, start_new_session=True)


def main() -> int:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
    zero_setup_mode = not os.environ.get("DATABASE_URL")
    var_dir = Path(os.environ.get("RINGFENCE_VAR_DIR", ROOT / "var"))
    made = zero_setup.prepare(var_dir)
    if made:
        print(f"zero-setup: made {', '.join(made)} in {var_dir}", flush=True)
    manage("migrate", "--verbosity", "0")
    manage("seed_demo", *(["--print-logins"] if zero_setup_mode else []))
    commands = {
        # ASGI, as in production: the approval long-poll waits in the event loop (approvals.waiting);
        # whitenoise (a middleware) serves /static/ here as there.
        "web": [PY, "-m", "uvicorn", "config.asgi:application", "--host", HOST, "--port", PORT, "--lifespan", "off",
                "--timeout-graceful-shutdown", "10"],
        "worker": [PY, "-m", "celery", "-A", "config", "worker", "--loglevel", "INFO", "--concurrency", "2",
                   "--pool", "threads" if zero_setup_mode else "prefork", "--hostname", f"worker@{HOST}-{PORT}"],
        "beat": [PY, "-m", "celery", "-A", "config", "beat", "--loglevel", "INFO",
                 "--schedule", str(var_dir / "celerybeat-schedule")],
    }
    procs = {name: start(name, argv) for name, argv in commands.items()}
    stopping = False

    def stop(*_: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    print(f"\nRingfence is running at http://{HOST}:{PORT}/  (Ctrl-C stops web, worker and beat)\n", flush=True)
    restarts = {name: 0 for name in commands}
    while not stopping:
        time.sleep(0.5)
        for name, proc in list(procs.items()):
            code = proc.poll()
            if code is None or stopping:
                continue
            if name == "web":
                print(f"web server exited with {code}; stopping", flush=True)
                stopping = True
                break
            restarts[name] += 1
            print(f"{name} exited with {code}; restarting (restart #{restarts[name]})", flush=True)
            time.sleep(RESTART_DELAY)
            procs[name] = start(name, commands[name])
    for proc in procs.values():
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
    deadline = time.monotonic() + 15
    for proc in procs.values():
        try:
            proc.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    print("stopped", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
