"""A fault for a worker (`celery worker --include` this): once ready, it ignores SIGTERM, as a
worker whose warm shutdown hangs would look from outside."""

from __future__ import annotations

import signal

from celery.signals import worker_ready


@worker_ready.connect
def _ignore_sigterm(**_) -> None:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
