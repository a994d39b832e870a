"""How an executor attempt reads on the plan page: the answer's status and the attempt's timing, or
Ringfence's own reason when there was no answer (a refused target, a connection failure, a timeout).
Never what a receiver wrote back: the plan page is shown to everyone who may view the plan."""

from __future__ import annotations

from datetime import timedelta
from typing import TYPE_CHECKING

from django import template

if TYPE_CHECKING:
    from rollouts.models import ActionAttempt

register = template.Library()


def _duration(elapsed: timedelta) -> str:
    ms = round(elapsed.total_seconds() * 1000)
    return f"{ms} ms" if ms < 10_000 else f"{ms / 1000:.1f} s"


@register.filter
def attempt_summary(attempt: ActionAttempt) -> str:
    """`HTTP 503, 41 ms`; `HTTP 302 not followed, 3 ms`; `webhook target 127.0.0.1 is a loopback
    address; …, 0 ms`. An attempt with an HTTP status shows no detail (before core.outbound the
    detail of such an attempt held the receiver's answer)."""
    parts = []
    if attempt.http_status:
        parts.append(f"HTTP {attempt.http_status}" + (" not followed" if 300 <= attempt.http_status < 400 else ""))
    elif attempt.detail:
        parts.append(attempt.detail)
    if attempt.finished_at is not None:
        parts.append(_duration(attempt.finished_at - attempt.started_at))
    return ", ".join(parts)
