"""TMR-03: the worker is SIGKILLed while its webhook rollback is in flight; a new worker finishes
it. The receiver sees one effect per idempotency key, and every attempt is recorded."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest
from django.conf import settings

from rollouts import services
from rollouts.models import ActionAttempt, RolloutAction, RolloutPlan
from tests.rollouts.receiver import Receiver
from tests.support.celery_processes import ROOT, celery_processes, wait_until

pytestmark = pytest.mark.django_db(transaction=True)
LEASE, TIMEOUT, SWEEP = 3, 2, 0.5


@pytest.fixture
def receiver():
    running = Receiver(secret=settings.ROLLOUT_WEBHOOK_SECRET, hold_first=True).start()
    yield running
    running.stop()


def start_worker(env: dict[str, str], log) -> subprocess.Popen:
    with open(log, "ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "governance", "worker", "--loglevel", "INFO", "--pool", "prefork",
             "--concurrency", "2", "--without-gossip", "--without-mingle", "--without-heartbeat",
             "--hostname", f"restarted-{os.getpid()}@%h"],
            cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)


def test_a_rollback_whose_worker_is_killed_mid_request_completes_once(make_plan, owner, release_manager, receiver,
                                                                        capsys):
    env = {"ROLLOUT_WEBHOOK_SECRET": settings.ROLLOUT_WEBHOOK_SECRET, "ROLLOUT_WEBHOOK_TIMEOUT_SECONDS": TIMEOUT,
           "ROLLOUT_EXECUTOR_LEASE_SECONDS": LEASE, "ROLLOUT_SWEEP_SECONDS": SWEEP,
           "ROLLOUT_EXECUTOR_STALL_SECONDS": 2, "ROLLOUT_EVALUATION_SECONDS": 600}
    plan = make_plan(executor="webhook", webhook_url=receiver.url)
    plan = services.start_rollout(plan.pk, actor=release_manager)
    with celery_processes(sweep_seconds=SWEEP, env=env) as celery:
        action = services.roll_back(plan.pk, actor=owner, reason="p95 doubled after the release")
        wait_until(lambda: receiver.requests, 20, "the worker's webhook request reached the receiver")
        os.killpg(celery.worker.pid, signal.SIGKILL)  # mid-request: the answer never reaches it
        celery.worker.wait(timeout=10)
        killed = time.monotonic()
        receiver.release.set()
        log = celery.workdir / "worker-restarted.log"
        celery.worker = start_worker(celery.env, log)
        wait_until(lambda: log.exists() and " ready." in log.read_text(errors="replace"), 60,
                   "the new worker is ready")
        restarted = time.monotonic()
        wait_until(lambda: RolloutPlan.objects.get(pk=plan.pk).state == "rolled_back", 30,
                   "the restarted worker finished the rollback")
        done = time.monotonic()

    action.refresh_from_db()
    attempts = list(action.attempt_log.order_by("number").values_list("outcome", flat=True))
    assert action.state == RolloutAction.State.SUCCEEDED
    assert attempts == [ActionAttempt.Outcome.INTERRUPTED, ActionAttempt.Outcome.OK]
    assert receiver.effects == {action.idempotency_key: 1}  # one effect per key
    assert receiver.keys() == {action.idempotency_key: 2}  # both attempts sent the same key
    assert all(r["signed"] for r in receiver.requests)
    assert receiver.requests[0]["body"] == receiver.requests[1]["body"]
    # Bounded by the lease and the sweep interval (plus a loaded machine's slack), not by the
    # broker's visibility timeout (2 h), after which the lost message itself would come back.
    assert done - restarted < LEASE + SWEEP + 15 < settings.CELERY_BROKER_VISIBILITY_TIMEOUT
    with capsys.disabled():
        print(f"\n[TMR-03] kill → rolled back {done - killed:.2f} s (new worker ready → done {done - restarted:.2f} s; "
              f"lease {LEASE} s, sweep {SWEEP} s); attempts {attempts}; distinct effects {len(receiver.effects)}")
