"""A page whose database or Redis cannot be reached answers 503 with a page that says so.

The API answers its own 503 problem JSON (core.problems); this covers the browser pages,
which would otherwise show Django's bare "Server Error (500)". The page is rendered without the
request's context processors, since they may need the database that just failed.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from django.http import HttpRequest, HttpResponse
from django.template.loader import render_to_string

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
