"""Denied access, answered and recorded in one place (RELIABILITY.md ACL-10, ASVS 5.0 V16.3.2).

Pages answer an object outside the person's scope with 404, so its existence is never confirmed,
and a page their role does not allow with 403; the API answers 401/403/404 problem JSON
(core.problems). Every such denial, and every change a service refused as forbidden,
writes one record to the `ringfence.security` logger, never an audit event: a denial changes
nothing.

    workflow = denials.get_in_scope(request, selectors.workflows_visible_to(user), "workflow", slug=slug)
    raise denials.out_of_scope(request, "approval request", pk)
"""

from __future__ import annotations

import logging
from typing import Any, TypeVar

from django.core.exceptions import PermissionDenied
from django.db.models import Model, QuerySet
from django.http import Http404, HttpRequest

from core.errors import TransitionRefused

security_log = logging.getLogger("ringfence.security")
M = TypeVar("M", bound=Model)


def _user(request: HttpRequest) -> object:
    user = getattr(request, "user", None)
    return user.pk if user is not None and user.is_authenticated else "anonymous"


def out_of_scope(request: HttpRequest, what: str, key: object) -> Http404:
    """Record that the person asked for a `what` they may not see; returns the 404 to raise."""
    security_log.info("out-of-scope %s user=%s id=%s path=%s", what, _user(request), key, request.path)
    return Http404(f"No such {what}.")


def forbidden(request: HttpRequest, message: str) -> PermissionDenied:
    """Record that the person tried what their role does not allow; returns the 403 to raise."""
    security_log.info("forbidden user=%s path=%s: %s", _user(request), request.path, message)
    return PermissionDenied(message)


def get_in_scope(request: HttpRequest, scoped: QuerySet[M], what: str, **lookup: Any) -> M:
    """The object of `scoped` (a queryset already limited to the person's scope) matching
    `lookup`; a recorded 404 when there is none."""
    found = scoped.filter(**lookup).first()
    if found is None:
        raise out_of_scope(request, what, ",".join(str(value) for value in lookup.values()))
    return found


def refused(request: HttpRequest, refusal: TransitionRefused, what: str) -> None:
    """Record a change a service refused because the person may not make it (403)."""
    if refusal.status == 403:
        security_log.info("refused %s user=%s %s path=%s", refusal.code, _user(request), what, request.path)


def api_denied(request: HttpRequest, status: int, code: str) -> None:
    """Record an API call answered 401, 403 or 404: who called (never the token itself)."""
    auth = getattr(request, "auth", None)
    account = getattr(auth, "service_account_id", None)
    caller = f"account={account}" if account is not None else f"user={_user(request)}"
    security_log.info("api denied status=%s code=%s %s path=%s", status, code, caller, request.path)
