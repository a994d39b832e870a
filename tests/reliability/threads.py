"""Running Django code in threads with their own database connections (closed in `finally`)."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from django.db import connection, connections


class Outcome:
    """What a background call returned or raised, with the backend pid it ran on."""

    def __init__(self) -> None:
        self.value: Any = None
        self.error: BaseException | None = None
        self.backend_pid: int | None = None
        self.started = threading.Event()


def in_thread(fn: Callable[[], Any], *, name: str = "actor") -> tuple[threading.Thread, Outcome]:
    """Start `fn` in a thread on a fresh connection; `outcome.backend_pid` is set before `fn` runs."""
    outcome = Outcome()

    def run() -> None:
        try:
            with connection.cursor() as cursor:
                cursor.execute("SELECT pg_backend_pid()")
                outcome.backend_pid = cursor.fetchone()[0]
            outcome.started.set()
            outcome.value = fn()
        except BaseException as exc:  # noqa: BLE001 - reported to the test
            outcome.error = exc
        finally:
            outcome.started.set()
            connection.close()

    thread = threading.Thread(target=run, name=name, daemon=True)
    thread.start()
    return thread, outcome


@contextmanager
def database_settings(**changes: Any) -> Iterator[None]:
    """Connections opened inside the block use changed settings (e.g. a proxy port, a lock_timeout).

    Django's connections share one settings dict; it is restored afterwards.
    """
    settings_dict = connections["default"].settings_dict
    options = changes.pop("OPTIONS", {})
    saved = {key: settings_dict[key] for key in changes}
    saved_options = dict(settings_dict.get("OPTIONS", {}))
    settings_dict.update(changes)
    settings_dict["OPTIONS"] = {**saved_options, **options}
    try:
        yield
    finally:
        settings_dict.update(saved)
        settings_dict["OPTIONS"] = saved_options


def session_options(*, lock_timeout_ms: int | None = None, statement_timeout_ms: int | None = None) -> dict:
    """The libpq `options` string the settings build from DATABASE_*_TIMEOUT_MS, with other values."""
    options = connections["default"].settings_dict.get("OPTIONS", {}).get("options", "")
    parts = dict(p.split("=", 1) for p in options.replace("-c ", "").split() if "=" in p)
    if lock_timeout_ms is not None:
        parts["lock_timeout"] = str(lock_timeout_ms)
    if statement_timeout_ms is not None:
        parts["statement_timeout"] = str(statement_timeout_ms)
    return {"options": " ".join(f"-c {k}={v}" for k, v in parts.items())}
