"""A worker that is alive but consumes nothing exits, so its supervisor starts a fresh one.

After a broker restart, a Celery worker on Redis can stay up, answer pings and yet take no more
messages from its queues (celery/celery#8030, #10205, #10302; a failed acknowledgement keeps its
prefetch slot, kombu 5.7). `make run`'s supervisor and systemd only restart a process that exits,
so every timer, delivery and rollback would wait on that worker forever.

The watchdog is a thread in the worker's main process. It counts the worker stalled when, for
WORKER_STALL_SECONDS on end, the queues it consumes held messages, it ran or held no task (ETA
countdowns aside), and it received nothing. A healthy idle worker takes a waiting message within
milliseconds, and a busy one is never counted, so the rule holds with any number of workers. When
the broker cannot be asked, nothing is concluded: reconnecting is the consumer's job.

A stalled worker is asked to stop (SIGTERM: warm shutdown); one still running a grace period later
is ended at once, with its pool. Unacknowledged messages go back to the queue either way
(acks_late, visibility timeout), and every task tolerates a second delivery.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time

from celery import bootsteps
from celery.signals import task_received, worker_ready
from celery.worker import state

logger = logging.getLogger(__name__)


def grace_seconds() -> float:
    """How long a stalled worker has to finish its warm shutdown before it is killed."""
    from django.conf import settings

    return settings.CELERY_WORKER_SOFT_SHUTDOWN_TIMEOUT + 10


class Stall:
    """The stall rule over observations at monotonic times; no I/O, so tests can drive it."""

    def __init__(self, limit: float) -> None:
        self.limit = limit
        self.since: float | None = None
        self.last_received: float | None = None

    def received(self, at: float) -> None:
        self.last_received = at

    def observe(self, at: float, *, waiting: int | None, holding: int) -> bool:
        """True once the worker has been stalled for `limit` seconds at time `at`."""
        if not waiting or holding:
            self.since = None
            return False
        if self.since is None or (self.last_received is not None and self.last_received >= self.since):
            self.since = at
        return at - self.since >= self.limit


class StallWatchdog(bootsteps.StartStopStep):
    """Worker step: watches from the moment the worker is ready until the process ends.

    It goes on watching through a shutdown: a warm shutdown that hangs (no task held, messages
    waiting) is a stall too, and a normal one takes the soft shutdown timeout, well inside the limit.
    """

    label = "stall watchdog"

    def __init__(self, worker, **kwargs) -> None:
        from django.conf import settings

        super().__init__(worker, **kwargs)
        self.limit = settings.WORKER_STALL_SECONDS
        self.grace = grace_seconds()
        self.interval = max(0.2, min(5.0, self.limit / 5))
        self.stall = Stall(self.limit)

    def include_if(self, worker) -> bool:
        from django.conf import settings

        return settings.WORKER_STALL_SECONDS > 0

    def start(self, worker) -> None:
        self.app = worker.app
        task_received.connect(self._on_received, weak=False)
        worker_ready.connect(self._on_ready, weak=False)

    def _on_received(self, sender=None, request=None, **_) -> None:
        self.stall.received(time.monotonic())

    def _on_ready(self, sender=None, **_) -> None:
        # The queues the worker was started to consume: one told to stop consuming (`celery control
        # cancel_consumer`) counts as stalled; stop such a worker instead.
        self.queues = list(self.app.amqp.queues.consume_from)
        threading.Thread(target=self._watch, name="stall-watchdog", daemon=True).start()

    def waiting(self) -> int | None:
        """Messages waiting in the queues this worker consumes; None when the broker does not answer."""
        try:
            with self.app.connection_for_write() as conn, conn.channel() as channel:
                return sum(channel.queue_declare(queue=name).message_count for name in self.queues)
        except Exception:  # noqa: BLE001 - an unreachable broker is no evidence of a stall
            return None

    def _watch(self) -> None:
        while True:
            time.sleep(self.interval)
            waiting = self.waiting()
            if self.stall.observe(time.monotonic(), waiting=waiting, holding=len(state.reserved_requests)):
                self._restart(waiting)
                return

    def _restart(self, waiting: int | None) -> None:
        logger.critical("worker stalled: %s message(s) waited %.0f s in %s and it received none; "
                        "stopping so its supervisor starts a fresh one", waiting, self.limit, ", ".join(self.queues))
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(self.grace)
        logger.critical("stalled worker still running %.0f s after SIGTERM; ending it now", self.grace)
        logging.shutdown()
        if os.getpgrp() == os.getpid():  # make run and systemd start the worker as its group's leader
            os.killpg(os.getpid(), signal.SIGKILL)
        os._exit(70)
