"""Database helpers shared by the services."""

from __future__ import annotations

from typing import Any


def row_of_batch(cursor: Any, sql: str, params: Any, *, statement: int) -> tuple | None:
    """Run the `;`-separated statements of `sql` in one round trip and return the first row of
    the one at index `statement` (0-based).

    PostgreSQL runs them in order, each with its own snapshot, so a statement still sees what
    was committed while an earlier one waited for a lock. Works with psycopg's client-side
    parameter binding, Django's default.
    """
    cursor.execute(sql, params)
    for _ in range(statement):
        cursor.nextset()
    return cursor.fetchone()
