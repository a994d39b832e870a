"""The one error type every service raises when it refuses a change."""

from __future__ import annotations


class TransitionRefused(Exception):
    """The change was not made; `code` is stable for the API, `message` is for a person.

    `status` is the HTTP status the API and the web map the refusal to.
    """

    STATUS = {
        "forbidden": 403,
        "four_eyes": 403,
        "not_found": 404,
        "conflict": 409,
        "not_pending": 409,
        "already_decided": 409,
        "already_paused": 409,
        "not_paused": 409,
        "paused": 409,
        "not_approved": 409,
        "already_executed": 409,
        "approval_expired": 409,
        "outcome_reported": 409,
        "invalid": 422,
        "justification_required": 422,
    }

    def __init__(self, code: str, message: str, *, status: int | None = None, field: str | None = None) -> None:
        super().__init__(message)
        self.code, self.message, self.field = code, message, field
        self.status = status or self.STATUS.get(code, 409)


def require(ok: object, code: str, message: str, *, field: str | None = None) -> None:
    if not ok:
        raise TransitionRefused(code, message, field=field)
