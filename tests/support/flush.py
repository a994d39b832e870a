"""A transactional test ends with a flush: one TRUNCATE over every table, all or nothing.

Some modules keep real Celery worker and beat processes running across their tests. A task still
running when a test ends can hold a lock on one table and want another that the TRUNCATE has
already taken, while the TRUNCATE waits for the first. PostgreSQL breaks that deadlock by aborting
one of the two. When it aborts the flush, the test database is left full. The test itself has
passed, but the next one fails to set up, e.g. on a duplicate username.

Both sides are short and roll back whole. So the flush is simply tried again: the task finishes
(or is the one aborted, and is retried by its sweep), and the second TRUNCATE empties the tables.
Anything else that stops a flush still fails the test at once.
"""

from __future__ import annotations

import psycopg.errors
from django.core.management.base import CommandError
from django.test import TransactionTestCase

ATTEMPTS = 5


def _is_deadlock(error: BaseException) -> bool:
    cause = error.__cause__
    while cause is not None:
        if isinstance(cause, psycopg.errors.DeadlockDetected):
            return True
        cause = cause.__cause__
    return False


def retry_flush_on_deadlock() -> None:
    """Make every transactional test's flush try again (up to ATTEMPTS times) after a deadlock."""
    flush_once = TransactionTestCase._fixture_teardown

    def flush(self: TransactionTestCase) -> None:
        for attempt in range(1, ATTEMPTS + 1):
            try:
                return flush_once(self)
            except CommandError as error:
                if attempt == ATTEMPTS or not _is_deadlock(error):
                    raise

    TransactionTestCase._fixture_teardown = flush
