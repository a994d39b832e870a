"""RFC 9457 problem details: the one shape of every API error, 400 to 503.

Every error the API answers is `application/problem+json` with `type`, `title`, `status`,
`detail`, `instance`, a stable machine-readable `code` and `errors[]` (one entry per field
problem: where it is, the field path, a message a person can act on). No stack trace ever:
unexpected exceptions are logged server-side and answered with a generic 500. A database or
broker that is unreachable answers 503 with `Retry-After`, so callers retry and nothing is
inferred from the failure (dispatch never answers `allow` from an exception).
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from functools import wraps
from http import HTTPStatus
from typing import Any

from asgiref.sync import iscoroutinefunction, sync_to_async
from django.core.exceptions import PermissionDenied, RequestDataTooBig, TooManyFieldsSent
from django.db import DatabaseError, DataError, IntegrityError, InterfaceError, OperationalError
from django.http import Http404, HttpRequest, HttpResponse
from ninja.errors import AuthenticationError, HttpError, Throttled, ValidationError

from core import denials
from core.errors import TransitionRefused

logger = logging.getLogger("ringfence.api")

CONTENT_TYPE = "application/problem+json"
TYPE_PREFIX = "urn:ringfence:problem:"
UNAVAILABLE_RETRY_AFTER = 2
DENIAL_STATUSES = (401, 403, 404)


@dataclass
class FieldError:
    """One field that was refused: `location` is body, query, path or header."""

    field: str
    message: str
    location: str = "body"
    type: str = "invalid"

    def as_dict(self) -> dict[str, str]:
        return {"in": self.location, "field": self.field, "message": self.message, "type": self.type}


@dataclass(eq=False)
class Problem(Exception):
    """An API error raised anywhere below a route; rendered by the API's exception handler."""

    status: int
    code: str
    detail: str
    title: str = ""
    errors: list[FieldError] = field(default_factory=list)
    headers: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        super().__init__(self.detail)
        self.title = self.title or _title(self.status)


def _title(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Error"


def problem_response(request: HttpRequest | None, problem: Problem, *, denial: bool = True) -> HttpResponse:
    """The problem as a response. A 401, 403 or 404 is a denial (a 404 is how the API answers an
    object outside the caller's scope) and is recorded in the security log, unless `denial` is
    False (a path that names no endpoint at all)."""
    body = {
        "type": TYPE_PREFIX + problem.code,
        "title": problem.title,
        "status": problem.status,
        "detail": problem.detail,
        "instance": request.path if request is not None else "",
        "code": problem.code,
        "errors": [e.as_dict() for e in problem.errors],
    }
    response = HttpResponse(json.dumps(body), status=problem.status, content_type=CONTENT_TYPE)
    for name, value in problem.headers.items():
        response[name] = value
    if denial and problem.status in DENIAL_STATUSES and request is not None:
        denials.api_denied(request, problem.status, problem.code)
    return response


def is_problem(response: HttpResponse) -> bool:
    return response.get("Content-Type", "").split(";")[0].strip() == CONTENT_TYPE


# --- mapping exceptions to problems ----------------------------------------------------------

STATUS_CODES = {
    400: "bad_request",
    401: "unauthenticated",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    406: "not_acceptable",
    409: "conflict",
    413: "payload_too_large",
    415: "unsupported_media_type",
    422: "invalid",
    429: "rate_limited",
    500: "internal_error",
    503: "unavailable",
}


def _unavailable(what: str) -> Problem:
    return Problem(503, "unavailable", f"The {what} is unreachable right now; nothing was decided. Retry shortly.",
                   headers={"Retry-After": str(UNAVAILABLE_RETRY_AFTER)})


def _broker_errors() -> tuple[type[BaseException], ...]:
    errors: list[type[BaseException]] = []
    try:
        import redis.exceptions as redis_errors

        errors += [redis_errors.ConnectionError, redis_errors.TimeoutError, redis_errors.BusyLoadingError]
    except ImportError:  # pragma: no cover - redis is a pinned dependency
        pass
    try:
        from kombu.exceptions import OperationalError as KombuOperationalError

        errors.append(KombuOperationalError)
    except ImportError:  # pragma: no cover - kombu comes with celery
        pass
    return tuple(errors)


BROKER_ERRORS = _broker_errors()


def unreachable(exc: BaseException) -> str | None:
    """The dependency an exception says cannot be reached ("database", "message broker or cache"),
    or None. The API answers these 503 problem JSON, pages a 503 page (governance.middleware)."""
    if isinstance(exc, (OperationalError, InterfaceError)):
        return "database"
    if BROKER_ERRORS and isinstance(exc, BROKER_ERRORS):
        return "message broker or cache"
    return None


def _validation_errors(raw: Iterable[dict[str, Any]]) -> list[FieldError]:
    errors = []
    for item in raw:
        loc = [str(part) for part in item.get("loc", ())]
        location = loc[0] if loc else "body"
        parts = loc[1:]
        # ninja prefixes body fields with the view's argument name; drop it from the path.
        if location == "body" and len(parts) > 1:
            parts = parts[1:]
        errors.append(FieldError(field=".".join(parts) or location, message=str(item.get("msg", "Invalid value.")),
                                 location=location, type=str(item.get("type", "invalid"))))
    return errors


def _from_parse_error(cause: BaseException | None) -> Problem:
    if isinstance(cause, RequestDataTooBig):
        return too_large()
    if isinstance(cause, UnicodeDecodeError):
        return Problem(400, "malformed_body", "The body is not valid UTF-8.")
    if isinstance(cause, RecursionError):
        return Problem(400, "malformed_body", "The body nests too deeply.")
    if isinstance(cause, json.JSONDecodeError):
        return Problem(400, "malformed_body",
                       f"The body is not valid JSON: {cause.msg} at line {cause.lineno} column {cause.colno}.")
    return Problem(400, "malformed_body", "The body could not be read as JSON.")


def too_large() -> Problem:
    return Problem(413, "payload_too_large", "The body is larger than this server accepts.")


def problem_for(exc: BaseException) -> Problem:
    """The problem a caller sees for an exception; never includes the exception's internals."""
    if isinstance(exc, Problem):
        return exc
    if isinstance(exc, TransitionRefused):
        errors = [FieldError(exc.field, exc.message)] if exc.field else []
        return Problem(exc.status, exc.code, exc.message, errors=errors)
    if isinstance(exc, ValidationError):
        return Problem(422, "invalid", "Some fields are missing or invalid; see errors.",
                       errors=_validation_errors(exc.errors))
    if isinstance(exc, Throttled):
        headers = {"Retry-After": str(max(1, math.ceil(exc.wait or 1)))}
        return Problem(429, "rate_limited", "Too many requests with this token; retry after the delay given.",
                       headers=headers)
    if isinstance(exc, AuthenticationError):
        return Problem(401, "unauthenticated", "Send a valid, unrevoked token as 'Authorization: Bearer <token>'.",
                       headers={"WWW-Authenticate": 'Bearer realm="ringfence"'})
    if isinstance(exc, HttpError):
        if exc.status_code == 400 and exc.__cause__ is not None:
            return _from_parse_error(exc.__cause__)
        if exc.status_code == 403 and "CSRF" in exc.message:
            return Problem(403, "csrf_failed",
                           "Browser sessions must send the X-CSRFToken header; agents use a bearer token.")
        return Problem(exc.status_code, STATUS_CODES.get(exc.status_code, "error"), exc.message)
    if isinstance(exc, (RequestDataTooBig, TooManyFieldsSent)):
        return too_large()
    if isinstance(exc, Http404):
        return Problem(404, "not_found", "Nothing here, or not in your scope.")
    if isinstance(exc, PermissionDenied):
        return Problem(403, "forbidden", "You may not do this.")
    if what := unreachable(exc):
        logger.warning("%s unavailable: %s", what, type(exc).__name__)
        return _unavailable(what)
    if isinstance(exc, DataError):
        return Problem(422, "invalid", "A value is out of the range the database stores.")
    if isinstance(exc, IntegrityError):
        return Problem(409, "conflict", "This conflicts with a change made at the same moment; reload and retry.")
    if isinstance(exc, DatabaseError):
        logger.exception("database error")
        return _unavailable("database")
    logger.exception("unhandled API error", exc_info=exc)
    return Problem(500, "internal_error", "Something went wrong on our side; it has been logged. Nothing is decided.")


def handle_exception(request: HttpRequest, exc: Exception) -> HttpResponse:
    return problem_response(request, problem_for(exc))


def _converted(request: HttpRequest, response: HttpResponse) -> HttpResponse:
    """A non-problem error response (e.g. ninja's 405) turned into problem JSON, headers kept."""
    problem = Problem(response.status_code, STATUS_CODES.get(response.status_code, "error"),
                      _title(response.status_code) + ".")
    if response.status_code == 405:
        problem.detail = f"Use one of: {response.get('Allow', '')}."
    converted = problem_response(request, problem)
    for header in ("Allow", "Retry-After", "WWW-Authenticate"):
        if header in response:
            converted[header] = response[header]
    return converted


def problem_view(view: Callable[..., HttpResponse]) -> Callable[..., HttpResponse]:
    """Wrap an API URL's view: every error it answers or raises leaves as problem JSON. An async
    view (a path with an `async def` operation, e.g. the approval long-poll) stays async."""
    if iscoroutinefunction(view):

        @wraps(view)
        async def async_wrapper(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
            try:
                response = await view(request, *args, **kwargs)
            except Exception as exc:
                return await sync_to_async(handle_exception)(request, exc)
            if response.status_code >= 400 and not is_problem(response):
                return await sync_to_async(_converted)(request, response)
            return response

        return async_wrapper

    @wraps(view)
    def wrapper(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
        try:
            response = view(request, *args, **kwargs)
        except Exception as exc:  # the last line of defence: no Django debug page, no trace
            return handle_exception(request, exc)
        if response.status_code >= 400 and not is_problem(response):
            return _converted(request, response)
        return response

    return wrapper


def not_found_view(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
    return problem_response(request, Problem(404, "not_found", f"No API endpoint at {request.path}."), denial=False)


not_found_view.csrf_exempt = True  # type: ignore[attr-defined]
