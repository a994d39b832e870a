"""Business days as people write them: `[0, 1, 2, 3, 4]` → `Mon–Fri`."""

from __future__ import annotations

from collections.abc import Iterable

from django import template

register = template.Library()
NAMES = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")


@register.filter
def weekdays(days: Iterable[int] | None) -> str:
    """Runs of three or more days as a range: `[0, 1, 2, 3, 4, 6]` → `Mon–Fri, Sun`; all seven: `every day`."""
    chosen = sorted({int(d) for d in days or [] if str(d).isdigit() and 0 <= int(d) <= 6})
    if not chosen:
        return "no day"
    if len(chosen) == 7:
        return "every day"
    runs: list[list[int]] = []
    for day in chosen:
        if runs and day == runs[-1][-1] + 1:
            runs[-1].append(day)
        else:
            runs.append([day])
    parts = []
    for run in runs:
        if len(run) >= 3:
            parts.append(f"{NAMES[run[0]]}–{NAMES[run[-1]]}")
        else:
            parts.extend(NAMES[d] for d in run)
    return ", ".join(parts)
