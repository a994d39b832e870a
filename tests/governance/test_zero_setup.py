"""The zero-setup path: what `make run` starts (scripts/devserver.py) with no configuration at all
comes up on SQLite and Celery's filesystem broker, serves the login page, lets a demo person sign
in, and Ctrl-C stops web, worker and beat with nothing left running. Seeding the demo twice
changes nothing."""

from __future__ import annotations

import http.cookiejar
import io
import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.parse
import urllib.request

import pytest
from django.apps import apps
from django.core.management import call_command

from audit import log as audit
from governance import demo
from tests.governance.support import ROOT, database_state
from tests.reliability.proctree import descendants, running
from tests.reliability.waiting import free_port

# Everything the test harness configures; the zero-setup run must see none of it.
CONFIGURATION = ("DATABASE_URL", "CELERY_BROKER_URL", "REDIS_URL", "AUDIT_CHECKPOINT_KEY", "SECRET_KEY", "DEBUG",
                 "RINGFENCE_TESTING", "RINGFENCE_TEST_DATABASE_URL", "RINGFENCE_TEST_REDIS_URL", "RINGFENCE_VAR_DIR",
                 "DJANGO_SETTINGS_MODULE", "PYTEST_CURRENT_TEST", "HOST", "PORT")
STARTUP_SECONDS = 180  # migrate a fresh SQLite database and hash nine demo passwords on a busy machine
URL_LINE = re.compile(r"Ringfence is running at (http://\S+)")


class Output:
    """The devserver's combined output, read by a thread so the pipe never fills up."""

    def __init__(self, stream) -> None:
        self.lines: list[str] = []
        self._queue: queue.Queue[str] = queue.Queue()
        threading.Thread(target=self._pump, args=(stream,), daemon=True).start()

    def _pump(self, stream) -> None:
        for line in stream:
            self.lines.append(line)
            self._queue.put(line)

    def wait_for(self, pattern: re.Pattern, seconds: float) -> re.Match:
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            try:
                line = self._queue.get(timeout=min(left, 1.0))
            except queue.Empty:
                continue
            if match := pattern.search(line):
                return match
        raise AssertionError(f"no line matching {pattern.pattern!r} within {seconds:.0f}s:\n{self.text[-4000:]}")

    @property
    def text(self) -> str:
        return "".join(self.lines)


def _get_until_up(opener, url: str, seconds: float = 30):
    deadline = time.monotonic() + seconds
    while True:
        try:
            return opener.open(url, timeout=10)
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


@pytest.mark.timeout(STARTUP_SECONDS + 120)
def test_make_run_serves_the_app_with_no_configuration_and_ctrl_c_stops_every_process(tmp_path, figures):
    env = {k: v for k, v in os.environ.items() if k not in CONFIGURATION}
    env.update(RINGFENCE_VAR_DIR=str(tmp_path / "var"), PORT=str(free_port()), PYTHONUNBUFFERED="1")
    started = time.monotonic()
    proc = subprocess.Popen([sys.executable, "scripts/devserver.py"], cwd=ROOT, env=env, stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    output = Output(proc.stdout)
    tree: set[int] = set()
    try:
        base = output.wait_for(URL_LINE, STARTUP_SECONDS).group(1)
        jar = http.cookiejar.CookieJar()
        opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(jar))
        login_url = urllib.parse.urljoin(base, "/accounts/login/")
        login_page = _get_until_up(opener, login_url)
        up_after = time.monotonic() - started
        assert login_page.status == 200
        page = login_page.read().decode()
        assert "Sign in to Ringfence" in page
        assert f"(password {demo.DEMO_PASSWORD!r})" in output.text and "alice" in output.text

        csrf = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page).group(1)
        form = urllib.parse.urlencode({"username": "alice", "password": demo.DEMO_PASSWORD,
                                       "csrfmiddlewaretoken": csrf, "next": ""}).encode()
        signed_in = opener.open(urllib.request.Request(login_url, data=form, headers={"Referer": login_url}),
                                timeout=30)
        landing = signed_in.read().decode()
        assert signed_in.status == 200 and signed_in.url != login_url, "the demo login was refused"
        assert "alice" in landing and "refund-agent" in (landing + opener.open(
            urllib.parse.urljoin(base, "/workflows/"), timeout=30).read().decode())

        tree = descendants(proc.pid)
        commands = list(tree.values())
        assert any("uvicorn" in c and "config.asgi" in c for c in commands), commands
        assert any("celery" in c and " worker" in c for c in commands), commands
        assert any("celery" in c and " beat" in c for c in commands), commands
        assert (tmp_path / "var" / "ringfence.sqlite3").exists()
        assert not any(str(ROOT / "var") in c for c in commands)

        proc.send_signal(signal.SIGINT)  # Ctrl-C
        stopping = time.monotonic()
        code = proc.wait(timeout=60)
        stopped_in = time.monotonic() - stopping
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        leftovers = [pid for pid in tree if running(pid)]
        for pid in leftovers:  # never leave our own children behind, even when the test fails
            os.kill(pid, signal.SIGKILL)

    figures(f"zero-setup: login page up {up_after:.1f}s after start; {len(tree)} processes in the tree; "
            f"Ctrl-C stopped everything in {stopped_in:.1f}s; left running: {len(leftovers)}")
    assert code == 0, output.text[-3000:]
    assert "stopped" in output.text
    assert leftovers == [], [tree[pid] for pid in leftovers]
    # The demo's audit trail on SQLite is a valid chain too.
    verified = subprocess.run([sys.executable, "manage.py", "verify_audit"], cwd=ROOT, env=env, capture_output=True,
                              text=True, timeout=120)
    assert verified.returncode == 0 and verified.stdout.startswith("OK: "), verified.stdout + verified.stderr


def _row_counts() -> dict[str, int]:
    return {model._meta.label: model.objects.count() for model in apps.get_models()}


@pytest.mark.django_db
def test_seeding_the_demo_twice_changes_nothing(settings, tmp_path, figures):
    """`manage.py seed_demo` (every app's part of the story) a second time: no new row anywhere,
    no audit event, the same demo agent token."""
    settings.VAR_DIR = tmp_path
    call_command("seed_demo", stdout=io.StringIO())
    events_after_first, counts, state = audit.head(), _row_counts(), database_state()
    token = (tmp_path / "demo-agent-token").read_text()

    second = io.StringIO()
    call_command("seed_demo", stdout=second)
    figures(f"demo seed: first run wrote {events_after_first[0]} audit events and {sum(counts.values())} rows; "
            f"second run: {second.getvalue().strip()}, audit head #{audit.head()[0]}")
    assert "already seeded" in second.getvalue()
    assert audit.head() == events_after_first
    assert _row_counts() == counts
    assert database_state() == state
    assert (tmp_path / "demo-agent-token").read_text() == token
