"""How other apps learn that a request closed.

    from approvals import outcomes
    outcomes.register("rollback", on_rollback_decided)   # e.g. in RolloutsConfig.ready()

Whenever a request reaches a terminal state, `approvals.tasks.run_outcome_handlers(request_id)` is
published on commit and calls every handler registered for the request's kind with its id. A lost
message is republished by the timer sweep until the handlers have all returned, so a handler may
run more than once: it must be idempotent and decide by reading `request.state` itself.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta

from approvals.models import ApprovalRequest
from core import clock

Handler = Callable[[int], None]
_handlers: dict[str, list[Handler]] = {}
# A closed request whose handlers have not finished this long after the last attempt is retried.
RETRY_AFTER = timedelta(seconds=60)
GIVE_UP_AFTER = timedelta(days=1)


def register(kind: str, handler: Handler) -> None:
    if kind not in ApprovalRequest.Kind.values:
        raise ValueError(f"unknown approval kind {kind!r}; use one of {', '.join(ApprovalRequest.Kind.values)}")
    registered = _handlers.setdefault(kind, [])
    if handler not in registered:
        registered.append(handler)


def unregister(kind: str, handler: Handler) -> None:
    if handler in _handlers.get(kind, []):
        _handlers[kind].remove(handler)


def handlers_for(kind: str) -> list[Handler]:
    return list(_handlers.get(kind, ()))


def run(request_id: int) -> int:
    """Call the handlers of a closed request's kind; returns how many ran (0 while it is pending)."""
    req = ApprovalRequest.objects.filter(pk=request_id).only("pk", "kind", "state").first()
    if req is None or req.is_pending:
        return 0
    ApprovalRequest.objects.filter(pk=request_id).update(outcome_attempted_at=clock.now())
    handlers = handlers_for(req.kind)
    for handler in handlers:
        handler(req.pk)
    ApprovalRequest.objects.filter(pk=request_id, outcomes_done_at__isnull=True).update(outcomes_done_at=clock.now())
    return len(handlers)


def stale_request_ids(limit: int = 100) -> list[int]:
    """Closed requests whose handlers never finished: the message was lost or a handler failed."""
    now = clock.now()
    return list(
        ApprovalRequest.objects.exclude(state=ApprovalRequest.State.PENDING)
        .filter(outcomes_done_at__isnull=True, closed_at__gte=now - GIVE_UP_AFTER, closed_at__lte=now - RETRY_AFTER)
        .exclude(outcome_attempted_at__gt=now - RETRY_AFTER)
        .order_by("closed_at").values_list("pk", flat=True)[:limit]
    )
