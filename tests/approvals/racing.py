"""Release several actors at the same instant (a barrier), each on its own database connection.

`Racers(n)` keeps n threads (and so n connections) alive across many races, so a trial costs the
race itself rather than n new PostgreSQL backends.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from django.db import connection


@dataclass
class Outcome:
    value: Any = None
    error: BaseException | None = None
    seconds: float = 0.0


class Racers:
    def __init__(self, n: int, timeout: float = 30) -> None:
        self.timeout = timeout
        self._inboxes: list[queue.Queue] = [queue.Queue() for _ in range(n)]
        self._results: queue.Queue = queue.Queue()
        self._threads = [threading.Thread(target=self._loop, args=(i,), daemon=True) for i in range(n)]
        for thread in self._threads:
            thread.start()

    def _loop(self, i: int) -> None:
        try:
            while (job := self._inboxes[i].get()) is not None:
                barrier, action = job
                outcome = Outcome()
                try:
                    barrier.wait(self.timeout)
                    started = time.perf_counter()
                    try:
                        outcome.value = action()
                    finally:
                        outcome.seconds = time.perf_counter() - started
                except BaseException as exc:  # noqa: BLE001 - reported to the test
                    outcome.error = exc
                self._results.put((i, outcome))
        finally:
            connection.close()

    def race(self, actions: list[Callable[[], Any]]) -> list[Outcome]:
        assert len(actions) <= len(self._inboxes), "more actions than racers"
        barrier = threading.Barrier(len(actions))
        for i, action in enumerate(actions):
            self._inboxes[i].put((barrier, action))
        outcomes: list[Outcome] = [Outcome()] * len(actions)
        for _ in actions:
            i, outcome = self._results.get(timeout=self.timeout)
            outcomes[i] = outcome
        return outcomes

    def close(self) -> None:
        for inbox in self._inboxes:
            inbox.put(None)
        for thread in self._threads:
            thread.join(self.timeout)

    def __enter__(self) -> Racers:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def race(actions: list[Callable[[], Any]], timeout: float = 30) -> list[Outcome]:
    """One race on fresh threads."""
    with Racers(len(actions), timeout) as racers:
        return racers.race(actions)
