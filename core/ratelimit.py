"""Per-caller rate limits: an exact sliding window kept in Redis, atomic across web processes.

Each caller (an API token, or a signed-in person using the API from a page) may make
`API_RATE_LIMIT_REQUESTS` requests in any `API_RATE_LIMIT_WINDOW_SECONDS`. One Lua script
trims, counts and records a request in a sorted set, timed by the Redis server's own clock,
so several web processes share one exact count and their clocks do not matter. Over the
limit the API answers 429 with `Retry-After` (seconds until the oldest counted request
leaves the window). If Redis cannot be reached the request fails closed with 503.

Without `REDIS_URL` (zero-setup mode) the window is kept in process memory: exact for one
process, per process when several run.
"""

from __future__ import annotations

import math
import threading
import time
import uuid
from collections import deque

from django.conf import settings
from ninja.errors import Throttled

KEY_PREFIX = "ringfence:ratelimit:v1:"

SLIDING_WINDOW = """
local now_parts = redis.call('TIME')
local now = tonumber(now_parts[1]) * 1000 + math.floor(tonumber(now_parts[2]) / 1000)
local limit = tonumber(ARGV[1])
local window = tonumber(ARGV[2])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - window)
local count = redis.call('ZCARD', KEYS[1])
if count < limit then
  redis.call('ZADD', KEYS[1], now, ARGV[3])
  redis.call('PEXPIRE', KEYS[1], window)
  return {1, 0}
end
local oldest = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
return {0, tonumber(oldest[2]) + window - now}
"""

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


def _take_local(key: str, limit: int, window_ms: int) -> tuple[bool, int]:
    now = time.monotonic() * 1000
    with _lock:
        stamps = _local_windows.setdefault(key, deque())
        while stamps and stamps[0] <= now - window_ms:
            stamps.popleft()
        if len(stamps) < limit:
            stamps.append(now)
            return True, 0
        return False, int(stamps[0] + window_ms - now)


def take(caller: str) -> tuple[bool, int]:
    """Count one request of `caller`; (allowed, milliseconds until a retry can succeed).

    Raises the Redis client's connection or timeout error when Redis is unreachable; the API
    maps it to 503, so a broken limiter never lets traffic through unchecked.
    """
    limit = settings.API_RATE_LIMIT_REQUESTS
    window_ms = int(settings.API_RATE_LIMIT_WINDOW_SECONDS * 1000)
    key = KEY_PREFIX + caller
    if not settings.REDIS_URL:
        return _take_local(key, limit, window_ms)
    allowed, retry_ms = _redis_script()(keys=[key], args=[limit, window_ms, uuid.uuid4().hex])
    return bool(allowed), int(retry_ms)


def enforce(caller: str) -> None:
    """Raise `Throttled` (429 with Retry-After) when `caller` is over its limit."""
    allowed, retry_ms = take(caller)
    if not allowed:
        raise Throttled(wait=max(1, math.ceil(retry_ms / 1000)))


def reset(caller: str) -> None:
    """Forget a caller's window (used by operators after raising a limit, and by tests)."""
    key = KEY_PREFIX + caller
    if settings.REDIS_URL:
        _redis_script()
        _client.delete(key)
    else:
        with _lock:
            _local_windows.pop(key, None)
