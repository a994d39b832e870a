"""The API root: /api/v1. Routers of the apps are mounted here; errors are problem+json.

OpenAPI at /api/v1/openapi.json, interactive docs at /api/v1/docs (Swagger UI served from
django-ninja's packaged static files through our own static serving: no CDN).
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from functools import wraps
from typing import Any

from asgiref.sync import iscoroutinefunction
from django.http import HttpRequest, HttpResponse
from django.urls import URLPattern, re_path
from ninja import NinjaAPI
from ninja.errors import HttpError, ValidationError
from ninja.parser import Parser
from ninja.renderers import JSONRenderer

from core import idempotency, jsonbody, problems, ratelimit
from governance.api_auth import TOKEN

DESCRIPTION = """\
The agent and CI interface of Ringfence.

**Authentication.** Send a service account's token as `Authorization: Bearer rf_…`. A token
sees only the workflows its service account is scoped to; anything else is 404. Pages of the
web app may call some endpoints with the browser session and an `X-CSRFToken` header.

**Errors.** Every error is `application/problem+json` (RFC 9457): `type`, `title`, `status`,
`detail`, `instance`, a stable `code` and `errors[]` (`in`, `field`, `message`, `type`).
503 means a dependency is down and nothing was decided: retry after `Retry-After`.

**Bodies** are parsed strictly, and nothing is changed by a refused one: `Content-Type:
application/json` (a `charset`, if any, `utf-8`; else 415), UTF-8 without a byte order mark (else
400 `malformed_body`), finite numbers (422 `non_finite_number`), each object's members named once
(422 `duplicate_key`). Nothing is coerced: a number is a JSON number (`"0.5"` and `true` are
refused), an integer has no fraction, a boolean is `true` or `false`, text is a string, and a
date-time is an RFC 3339 string with its offset (`2030-01-08T10:00:00Z`). Unknown members are refused.

**Idempotency.** Endpoints documenting an `Idempotency-Key` header follow the IETF
Idempotency-Key draft: same key and body return the first answer (`Idempotent-Replayed: true`),
another body with the same key is 422, a retry while the first is running is 409, a missing key
is 400, and so is a key that is not 1 to 255 visible ASCII characters other than `"` and `,`
(`idempotency_key_invalid`; a UUID is ideal). Keys are kept for 24 hours by default.

**Rate limits.** Each token may make a configured number of requests in a sliding window
(default 600 per 60 s); over it the answer is 429 with `Retry-After`. Every answer to an
authenticated request carries `RateLimit-Limit`, `RateLimit-Remaining`, `RateLimit-Reset`
(seconds until the oldest counted request leaves the window) and `RateLimit-Policy`
(`600;w=60`), as in draft-ietf-httpapi-ratelimit-headers-06.
"""

ERROR_STATUSES = (400, 401, 403, 404, 409, 413, 415, 422, 429, 503)

PROBLEM_SCHEMA = {
    "title": "Problem",
    "type": "object",
    "description": "RFC 9457 problem details with Ringfence's stable `code` and field errors.",
    "required": ["type", "title", "status", "detail", "instance", "code", "errors"],
    "properties": {
        "type": {"type": "string", "description": "urn:ringfence:problem:<code>"},
        "title": {"type": "string"},
        "status": {"type": "integer", "minimum": 400, "maximum": 599},
        "detail": {"type": "string", "description": "What went wrong, for a person."},
        "instance": {"type": "string", "description": "The request path."},
        "code": {"type": "string", "description": "Stable, machine-readable reason."},
        "errors": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["in", "field", "message", "type"],
                "properties": {
                    "in": {"type": "string", "description": "body, query, path or header"},
                    "field": {"type": "string", "description": "Dotted path of the field, list indices as numbers."},
                    "message": {"type": "string"},
                    "type": {"type": "string"},
                },
            },
        },
    },
}


class StrictJSONParser(Parser):
    """JSON bodies only, UTF-8, finite numbers, unique member names (see core.jsonbody)."""

    def parse_body(self, request: HttpRequest) -> Any:
        return jsonbody.parse(request.body, request.content_type or "", request.content_params or {})


def handle_exception(request: HttpRequest, exc: Exception) -> HttpResponse:
    """ninja wraps whatever the parser raises in a 400; a parser's own problem is answered as it is."""
    if isinstance(exc, HttpError) and isinstance(exc.__cause__, problems.Problem):
        return problems.problem_response(request, exc.__cause__)
    return problems.handle_exception(request, exc)


def with_rate_limit_headers(view: Callable[..., Any]) -> Callable[..., Any]:
    """Every answer to a request counted against a rate limit says where its caller stands."""
    if iscoroutinefunction(view):

        @wraps(view)
        async def async_wrapper(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
            with ratelimit.recording() as quota:
                response = await view(request, *args, **kwargs)
            return ratelimit.add_headers(response, quota)

        return async_wrapper

    @wraps(view)
    def wrapper(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
        with ratelimit.recording() as quota:
            response = view(request, *args, **kwargs)
        return ratelimit.add_headers(response, quota)

    return wrapper


class StrictJSONRenderer(JSONRenderer):
    json_dumps_params = {"allow_nan": False}


class RingfenceAPI(NinjaAPI):
    def _get_urls(self) -> list[Any]:
        urls = [
            URLPattern(url.pattern, with_rate_limit_headers(problems.problem_view(url.callback)), url.default_args,
                       url.name)
            if isinstance(url, URLPattern) else url
            for url in super()._get_urls()
        ]
        return [*urls, re_path(r"^.*$", problems.not_found_view, name="not-found")]

    def get_openapi_schema(self, *, path_prefix: str | None = None, path_params: dict | None = None) -> Any:
        schema = super().get_openapi_schema(path_prefix=path_prefix, path_params=path_params)
        schema.setdefault("components", {}).setdefault("schemas", {})["Problem"] = PROBLEM_SCHEMA
        problem = {"content": {problems.CONTENT_TYPE: {"schema": {"$ref": "#/components/schemas/Problem"}}}}
        for path_item in schema["paths"].values():
            for operation in path_item.values():
                responses = operation.setdefault("responses", {})
                for status in ERROR_STATUSES:
                    responses.setdefault(str(status),
                                         {"description": problems.STATUS_CODES[status].replace("_", " "), **problem})
                _document_idempotency(operation)
        return schema


def _document_idempotency(operation: dict) -> None:
    for (module, name), required in idempotency.REGISTRY.items():
        if operation.get("operationId") == f"{module}_{name}".replace(".", "_"):
            operation.setdefault("parameters", []).append({
                "in": "header", "name": idempotency.HEADER, "required": required,
                "description": "A fresh unique value (e.g. a UUID) per intended action; reuse it on retries. "
                               "1 to 255 visible ASCII characters other than '\"' and ','.",
                "schema": {"type": "string", "minLength": 1, "maxLength": idempotency.MAX_KEY_LENGTH,
                           "pattern": idempotency.KEY_PATTERN},
            })


api = RingfenceAPI(
    title="Ringfence API",
    version="1",
    description=DESCRIPTION,
    urls_namespace="api",
    docs_url="/docs",
    auth=TOKEN,
    parser=StrictJSONParser(),
    renderer=StrictJSONRenderer(),
)

for _exc in (Exception, HttpError, ValidationError, problems.Http404):
    api.add_exception_handler(_exc, handle_exception)

for _module in ("audit.api", "approvals.api", "rollouts.api", "configuration.api"):
    if importlib.util.find_spec(_module) is not None:
        api.add_router("", importlib.import_module(_module).router)
