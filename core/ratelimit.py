"""Per-caller rate limits: an exact sliding window kept in Redis, atomic across web processes.

Each caller (an API token, or a signed-in person using the API from a page) may make
`API_RATE_LIMIT_REQUESTS` requests in any `API_RATE_LIMIT_WINDOW_SECONDS`. One Lua script
trims, counts and records a request in a sorted set, timed by the Redis server's own clock,
so several web processes share one exact count and their clocks do not matter. Over the
limit the API answers 429 with `Retry-After` (seconds until the oldest counted request
leaves the window). If Redis cannot be reached the request fails closed with 503.

Every answer to a counted request says where the caller stands, in the fields of the IETF
draft-ietf-httpapi-ratelimit-headers-06: `RateLimit-Limit` (requests per window),
`RateLimit-Remaining` (requests left now), `RateLimit-Reset` (seconds until the oldest counted
request leaves the window, so Remaining grows) and `RateLimit-Policy` (`<limit>;w=<window seconds>`).
`recording()` collects the count for one request and `add_headers()` writes it on the answer.

Without `REDIS_URL` (zero-setup mode) the window is kept in process memory: exact for one
process, per process when several run.
"""

from __future__ import annotations

import math
import threading
import time
import uuid
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass

from django.conf import settings
from django.http import HttpResponse
from ninja.errors import Throttled

KEY_PREFIX = "ringfence:ratelimit:v1:"

SLIDING_WINDOW = """
local now_parts = redis.call('TIME')
local now = tonumber(now_parts[1]) * 1000 + math.floor(tonumber(now_parts[2]) / 1000)
local limit = tonumber(ARGV[1])
local window = tonumber(ARGV[2])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - window)
local count = redis.call('ZCARD', KEYS[1])
local allowed = 0
if count < limit then
  redis.call('ZADD', KEYS[1], now, ARGV[3])
  redis.call('PEXPIRE', KEYS[1], window)
  count = count + 1
  allowed = 1
end
local oldest = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
return {allowed, limit - count, tonumber(oldest[2]) + window - now}
"""


@dataclass(frozen=True)
class Quota:
    """Where a caller stands after one counted request."""

    allowed: bool
    limit: int
    remaining: int
    reset_ms: int  # until the oldest counted request leaves the window


# The quota of the request being answered: a one-item list that `recording()` puts in place, so a
# count taken in another context (ninja runs a sync auth of an async view in a thread) reaches it.
_recorded: ContextVar[list[Quota] | None] = ContextVar("ringfence_ratelimit_quota", default=None)

_lock = threading.Lock()
_client = None
_script = None
_local_windows: dict[str, deque[float]] = {}


def _redis_script():
    global _client, _script
    with _lock:
        if _script is None:
            import redis

            timeout = settings.API_RATE_LIMIT_REDIS_TIMEOUT
            _client = redis.Redis.from_url(settings.REDIS_URL, socket_timeout=timeout, socket_connect_timeout=timeout)
            _script = _client.register_script(SLIDING_WINDOW)
        return _script


def _take_local(key: str, limit: int, window_ms: int) -> Quota:
    now = time.monotonic() * 1000
    with _lock:
        stamps = _local_windows.setdefault(key, deque())
        while stamps and stamps[0] <= now - window_ms:
            stamps.popleft()
        allowed = len(stamps) < limit
        if allowed:
            stamps.append(now)
        return Quota(allowed, limit, limit - len(stamps), int(stamps[0] + window_ms - now))


def take(caller: str) -> Quota:
    """Count one request of `caller` (when it is within the limit) and say where it stands.

    Raises the Redis client's connection or timeout error when Redis is unreachable; the API
    maps it to 503, so a broken limiter never lets traffic through unchecked.
    """
    limit = settings.API_RATE_LIMIT_REQUESTS
    window_ms = max(1, int(settings.API_RATE_LIMIT_WINDOW_SECONDS * 1000))
    key = KEY_PREFIX + caller
    if not settings.REDIS_URL:
        return _take_local(key, limit, window_ms)
    allowed, remaining, reset_ms = _redis_script()(keys=[key], args=[limit, window_ms, uuid.uuid4().hex])
    return Quota(bool(allowed), limit, int(remaining), int(reset_ms))


def enforce(caller: str) -> None:
    """Raise `Throttled` (429 with Retry-After) when `caller` is over its limit; the count is kept
    for the answer's RateLimit fields when a `recording()` is open."""
    quota = take(caller)
    if (recorded := _recorded.get()) is not None:
        recorded[:] = [quota]
    if not quota.allowed:
        raise Throttled(wait=max(1, math.ceil(quota.reset_ms / 1000)))


@contextmanager
def recording() -> Iterator[list[Quota]]:
    """Collect the quota counted while one request is answered (empty when none was)."""
    recorded: list[Quota] = []
    token = _recorded.set(recorded)
    try:
        yield recorded
    finally:
        _recorded.reset(token)


def add_headers(response: HttpResponse, recorded: list[Quota]) -> HttpResponse:
    """Write the RateLimit fields (draft-ietf-httpapi-ratelimit-headers-06) of a counted request."""
    if recorded:
        quota = recorded[-1]
        response["RateLimit-Limit"] = str(quota.limit)
        response["RateLimit-Remaining"] = str(max(0, quota.remaining))
        response["RateLimit-Reset"] = str(max(0, math.ceil(quota.reset_ms / 1000)))
        response["RateLimit-Policy"] = f"{quota.limit};w={math.ceil(settings.API_RATE_LIMIT_WINDOW_SECONDS)}"
    return response


def reset(caller: str) -> None:
    """Forget a caller's window (used by operators after raising a limit, and by tests)."""
    key = KEY_PREFIX + caller
    if settings.REDIS_URL:
        _redis_script()
        _client.delete(key)
    else:
        with _lock:
            _local_windows.pop(key, None)
