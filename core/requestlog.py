"""One log line per request, and a request id that follows the work into Celery.

`RequestLogMiddleware` (first in MIDDLEWARE) takes the caller's `X-Request-ID` when it is a sane
token, or makes one, answers it back in the same header, and logs one line per request on
`ringfence.request`: method, path, status, duration, and who asked (the signed-in person or the
API token's service account). `RequestIdFilter` puts the id of the request (or of the Celery task's
originating request) on every log record, so with LOG_FORMAT=json each line carries it.

Publishing a task during a request stamps the id on the message (`before_task_publish`); the worker
sets it for the task's run (`task_prerun`), so a task's log lines carry the id of the request that
caused them.
"""

from __future__ import annotations

import logging
import re
import time
import uuid
from contextvars import ContextVar

from asgiref.sync import iscoroutinefunction, markcoroutinefunction
from celery.signals import before_task_publish, task_postrun, task_prerun
from django.http import HttpRequest, HttpResponse

from core import metrics
from core.middleware import loaded_user

HEADER = "X-Request-ID"
MESSAGE_HEADER = "ringfence_request_id"
_SANE = re.compile(r"[A-Za-z0-9._:-]{1,128}")

request_id: ContextVar[str] = ContextVar("ringfence_request_id", default="")
logger = logging.getLogger("ringfence.request")


class RequestIdFilter(logging.Filter):
    """Adds `request_id` to every record (empty outside a request or task)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not getattr(record, "request_id", ""):
            record.request_id = request_id.get()
        return True


def _who(request: HttpRequest) -> dict[str, str]:
    """Who asked, from what the request already loaded."""
    try:
        account = getattr(getattr(request, "auth", None), "service_account", None)
        if account is not None:
            return {"service_account": str(account.name)}
        user = loaded_user(request)
        if user is not None and user.is_authenticated:
            return {"user": user.get_username()}
    except Exception:  # noqa: BLE001 - the line is written without a name rather than not at all
        pass
    return {}


class RequestLogMiddleware:
    sync_capable = True
    async_capable = True

    def __init__(self, get_response):
        self.get_response = get_response
        if iscoroutinefunction(get_response):
            markcoroutinefunction(self)

    def _begin(self, request: HttpRequest):
        given = request.headers.get(HEADER, "")
        rid = given if _SANE.fullmatch(given) else uuid.uuid4().hex
        request.request_id = rid
        return request_id.set(rid), time.perf_counter()

    def _end(self, request: HttpRequest, response: HttpResponse, token, started: float) -> HttpResponse:
        duration = time.perf_counter() - started
        response[HEADER] = request.request_id
        match = getattr(request, "resolver_match", None)
        route = match.route if match is not None else getattr(request, "route_label", "")
        logger.info("%s %s %s %.1f ms", request.method, request.path, response.status_code, duration * 1000,
                    extra={"method": request.method, "path": request.path, "route": route,
                           "status": response.status_code, "duration_ms": round(duration * 1000, 2),
                           **_who(request)})
        metrics.observe_request(request.method, route, response.status_code, duration)
        request_id.reset(token)
        return response

    def __call__(self, request: HttpRequest):
        if iscoroutinefunction(self):
            return self.__acall__(request)
        token, started = self._begin(request)
        return self._end(request, self.get_response(request), token, started)

    async def __acall__(self, request: HttpRequest):
        token, started = self._begin(request)
        return self._end(request, await self.get_response(request), token, started)


@before_task_publish.connect(weak=False)
def _stamp_message(headers: dict | None = None, **_) -> None:
    rid = request_id.get()
    if rid and headers is not None:
        headers.setdefault(MESSAGE_HEADER, rid)


_task_tokens: dict[str, object] = {}


@task_prerun.connect(weak=False)
def _task_started(task_id: str | None = None, task=None, **_) -> None:
    rid = getattr(task.request, MESSAGE_HEADER, None) if task is not None else None
    if rid is None and task is not None:
        rid = (getattr(task.request, "headers", None) or {}).get(MESSAGE_HEADER)
    _task_tokens[task_id or ""] = request_id.set(str(rid) if rid else f"task-{task_id}")


@task_postrun.connect(weak=False)
def _task_finished(task_id: str | None = None, **_) -> None:
    token = _task_tokens.pop(task_id or "", None)
    if token is not None:
        request_id.reset(token)
