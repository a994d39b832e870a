"""Middleware of every answer: no copy of a private one is stored, and a page whose database or
Redis cannot be reached says so.

UnavailableMiddleware: the API answers its own 503 problem JSON (core.problems); this covers the
browser pages, which would otherwise show Django's bare "Server Error (500)". The page is rendered
without the request's context processors, since they may need the database that just failed.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from django.conf import settings
from django.http import HttpRequest, HttpResponse
from django.template.loader import render_to_string
from django.utils.cache import patch_cache_control

from core.problems import UNAVAILABLE_RETRY_AFTER, unreachable

logger = logging.getLogger(__name__)


class UnavailableMiddleware:
    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        return self.get_response(request)

    def process_exception(self, request: HttpRequest, exc: Exception) -> HttpResponse | None:
        what = unreachable(exc)
        if what is None:
            return None
        logger.warning("%s unavailable answering %s %s: %s", what, request.method, request.path, type(exc).__name__)
        html = render_to_string("503.html", {"what": what, "changing": request.method not in ("GET", "HEAD")})
        return HttpResponse(html, status=503, headers={"Retry-After": str(UNAVAILABLE_RETRY_AFTER)})


class NoStoreMiddleware:
    """`Cache-Control: no-store` on every API answer and on every answer to a signed-in person, so
    that neither a shared proxy nor the browser's cache and history keep a copy of private data.
    Static files and the public pages an anonymous visitor is shown are left as they are."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response
        self.static_prefix = "/" + settings.STATIC_URL.lstrip("/")

    def __call__(self, request: HttpRequest) -> HttpResponse:
        response = self.get_response(request)
        if request.path_info.startswith(self.static_prefix) or "no-store" in response.get("Cache-Control", ""):
            return response
        if request.path_info.startswith("/api/") or _signed_in(request):
            patch_cache_control(response, no_store=True)
        return response


def loaded_user(request: HttpRequest):
    """The user the request has already read (the auth middleware keeps it on first use of
    request.user), else None. A middleware looking after the answer uses this: reading the session
    or the user again could hang or fail (the database is away) where the answer did not."""
    return getattr(request, "_cached_user", None)


def _signed_in(request: HttpRequest) -> bool:
    """A session cookie whose user was never read counts as signed in."""
    user = loaded_user(request)
    if user is None:
        return settings.SESSION_COOKIE_NAME in request.COOKIES
    try:
        return user.is_authenticated
    except Exception:  # noqa: BLE001 - store nothing when in doubt
        return True
