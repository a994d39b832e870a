from __future__ import annotations

from datetime import datetime

from django import template

register = template.Library()
SOON_SECONDS = 120


@register.filter
def urgency(due_at: datetime, now: datetime) -> str:
    """CSS class for a deadline: `overdue`, `soon` (under two minutes) or nothing."""
    left = (due_at - now).total_seconds()
    return "overdue" if left < 0 else "soon" if left < SOON_SECONDS else ""


@register.filter
def action_label(action: str) -> str:
    """`approval.auto_approved` → `auto approved`."""
    return words(action.split(".", 1)[-1])


@register.filter
def words(value: str) -> str:
    """`known_change` → `known change`."""
    return str(value).replace("_", " ")


@register.filter
def duration(seconds: int) -> str:
    """A level's timeout as a person reads it: 600 → `10 min`, 90 → `90 s`, 7200 → `2 h`."""
    for unit, name in ((86400, "d"), (3600, "h"), (60, "min")):
        if seconds >= unit and seconds % unit == 0:
            return f"{seconds // unit} {name}"
    return f"{seconds} s"


@register.filter
def role_words(roles: object, separator: str = ", ") -> str:
    """Role names as people say them: `["senior_approver", "approver"]` → `senior approver, approver`."""
    if isinstance(roles, str):
        roles = [roles]
    return separator.join(words(role) for role in roles or [])


@register.filter
def outcome_sentence(summary: str) -> str:
    """How a request ended, as a record states it: "Already approved by Alice at 10:02." (what a
    late-comer is told) reads "Approved by Alice at 10:02." in the evidence bundle."""
    text = str(summary)
    if text.startswith("Already "):
        text = text[len("Already "):]
        text = text[:1].upper() + text[1:]
    return text
