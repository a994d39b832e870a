"""Waiting for an approval request to close without holding a worker, and the wake-up when it does.

`GET /api/v1/approvals/{id}?wait=s` is an async view: while the request is pending it awaits a
wake-up in the event loop instead of sleeping in a worker, so a uvicorn worker serves any number
of waiting agents beside its other requests. Whenever a request leaves pending, the service's
on-commit hook (`request_closed`) publishes its id on a Redis pub/sub channel; every web process
holds one subscription per event loop, shared by all of its waiters, and wakes those waiting on
that id. A woken waiter re-reads the request from the database, which is the truth: the message
only says "look now".

Redis pub/sub rather than PostgreSQL LISTEN/NOTIFY: Redis is already there (broker, cache, rate
limits) and a subscription costs a Redis connection per process, not a database connection; and
NOTIFY serializes the commits of every notifying transaction on one lock, which is the kind of
global lock on the decision path that the transparency log was rebuilt to get rid of.

Pub/sub delivers at most once: a message published while a process was reconnecting is lost. So
every `safety_net_seconds()` (API_LONG_POLL_INTERVAL_SECONDS stretched tenfold: 5 s by default)
one query per event loop asks which of the awaited requests have closed and wakes their waiters;
every waiter is also woken when its process's subscription comes back, and re-reads at its
deadline. Without Redis (zero-setup mode) or while it is away, that query runs every
API_LONG_POLL_INTERVAL_SECONDS. The channel is named after the database, so installations (and
test runs) sharing one Redis never wake each other's waiters.

A waiting request holds no database connection (its reads release theirs) and no worker; under
ASGI it still parks the thread Django gave its sync middleware (WhiteNoise, UnavailableMiddleware).
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager, suppress
from typing import TypeVar

import redis
import redis.asyncio
from asgiref.sync import sync_to_async
from django.conf import settings
from django.db import connection

from approvals import callbacks
from approvals.models import ApprovalRequest

logger = logging.getLogger(__name__)
T = TypeVar("T")
SAFETY_NET_FACTOR = 10
RECONNECT_SECONDS = (0.5, 5.0)  # first and longest pause before a lost subscription is tried again
REREADS_AT_ONCE = 4  # per process: the connections that waking waiters may open at one time
SUBSCRIBE_SECONDS = 5.0  # (re)subscribing runs in the background: a loaded Redis may take its time


def redis_url() -> str | None:
    """The Redis the wake-ups go through: REDIS_URL, else a Redis broker; None without Redis."""
    url = settings.REDIS_URL or settings.CELERY_BROKER_URL
    return url if url.startswith(("redis://", "rediss://", "unix://")) else None


def channel() -> str:
    return f"ringfence:{settings.DATABASES['default']['NAME']}:approval-closed"


def safety_net_seconds() -> float:
    """How often the awaited requests are checked while wake-ups flow, in case one was lost."""
    return settings.API_LONG_POLL_INTERVAL_SECONDS * SAFETY_NET_FACTOR


# -- announcing (sync: runs on commit of the transition) ---------------------------------------------

_publishers: dict[str, redis.Redis] = {}


def announce(request_id: int) -> bool:
    """Wake every process's waiters on request `request_id`. Never raises: a lost wake-up costs a
    waiter at most the safety net's interval."""
    url = redis_url()
    if url is None:
        return False
    try:
        client = _publishers.get(url)
        if client is None:
            timeout = settings.REDIS_SOCKET_TIMEOUT_SECONDS
            client = _publishers.setdefault(url, redis.Redis.from_url(
                url, socket_timeout=timeout, socket_connect_timeout=timeout))
        client.publish(channel(), str(request_id))
    except (redis.RedisError, OSError):
        logger.warning("could not announce that approval request %s closed", request_id, exc_info=True)
        return False
    return True


def request_closed(request_id: int) -> None:
    """On commit of the transition that closed request `request_id` (approved, rejected, expired,
    auto-approved, cancelled, overridden): wake its waiters, then send its callback if it has one."""
    announce(request_id)
    callbacks.publish_for_request(request_id)


# -- waiting (async) --------------------------------------------------------------------------------

class _Watch:
    """Everything one event loop's waiters share: who waits on what, the Redis subscription that
    wakes them, and the safety net, one query for all of them. It ends with its last waiter."""

    def __init__(self, url: str | None) -> None:
        self.waiters: dict[int, set[asyncio.Event]] = {}
        self.live = asyncio.Event()
        loop = asyncio.get_running_loop()
        # A context of their own: they outlive the request that started them.
        self.tasks = [loop.create_task(self._check_closed(), name="approval wait safety net",
                                       context=contextvars.Context())]
        if url is not None:
            self.tasks.append(loop.create_task(self._listen(url, channel()), name="approval wake-ups",
                                               context=contextvars.Context()))

    def add(self, request_id: int, event: asyncio.Event) -> None:
        self.waiters.setdefault(request_id, set()).add(event)

    def discard(self, request_id: int, event: asyncio.Event) -> bool:
        """Forget a waiter; True when it was the last one."""
        events = self.waiters.get(request_id, set())
        events.discard(event)
        if not events:
            self.waiters.pop(request_id, None)
        return not self.waiters

    def _wake(self, request_ids: list[int] | None = None) -> None:
        for request_id in list(self.waiters) if request_ids is None else request_ids:
            for event in self.waiters.get(request_id, ()):
                event.set()

    async def _listen(self, url: str, name: str) -> None:
        pause, subscribed_before = RECONNECT_SECONDS[0], False
        while True:
            timeout = settings.REDIS_SOCKET_TIMEOUT_SECONDS
            client = redis.asyncio.Redis.from_url(url, socket_connect_timeout=timeout, socket_keepalive=True)
            pubsub = client.pubsub(ignore_subscribe_messages=True)
            try:
                await asyncio.wait_for(pubsub.subscribe(name), max(timeout, SUBSCRIBE_SECONDS))
                self.live.set()
                pause = RECONNECT_SECONDS[0]
                if subscribed_before:  # back after an outage: whatever closed meanwhile was not heard
                    self._wake()
                subscribed_before = True
                async for message in pubsub.listen():
                    with suppress(TypeError, ValueError):
                        self._wake([int(message["data"])])
            except Exception as exc:  # noqa: BLE001 - the safety net polls meanwhile; try again
                logger.warning("approval wake-ups unavailable (%s: %s); waits re-read every %s s meanwhile",
                               type(exc).__name__, exc, settings.API_LONG_POLL_INTERVAL_SECONDS)
            finally:
                self.live.clear()
                with suppress(Exception):
                    await pubsub.aclose()
                    await client.aclose()
            await asyncio.sleep(pause)
            pause = min(pause * 2, RECONNECT_SECONDS[1])

    async def _check_closed(self) -> None:
        """Every safety-net interval (API_LONG_POLL_INTERVAL_SECONDS while wake-ups are off), one
        query asks which of the awaited requests closed, and wakes their waiters."""
        while True:
            live = self.live.is_set()
            await asyncio.sleep(safety_net_seconds() if live else settings.API_LONG_POLL_INTERVAL_SECONDS)
            if not self.waiters:
                continue
            try:
                closed = await sync_to_async(_closed_among, thread_sensitive=False)(list(self.waiters))
            except Exception:  # noqa: BLE001 - each waiter still re-reads at its deadline
                logger.warning("could not check the awaited approval requests", exc_info=True)
                continue
            self._wake(closed)

    async def close(self) -> None:
        for task in self.tasks:
            task.cancel()
        for task in self.tasks:
            with suppress(asyncio.CancelledError):
                await task


def _closed_among(request_ids: list[int]) -> list[int]:
    try:
        return list(ApprovalRequest.objects.filter(pk__in=request_ids).exclude(state=ApprovalRequest.State.PENDING)
                    .values_list("pk", flat=True))
    finally:
        connection.close()  # a pool thread of the event loop: it keeps no connection between checks


_watches: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Watch] = weakref.WeakKeyDictionary()


@asynccontextmanager
async def _watching(request_id: int) -> AsyncIterator[asyncio.Event]:
    """Register a waiter on `request_id`: the event is set when it may have closed. Once this
    yields, a close announced later wakes it (or, without wake-ups, the next check does)."""
    loop = asyncio.get_running_loop()
    watch = _watches.get(loop)
    new = watch is None
    if watch is None:
        watch = _watches[loop] = _Watch(redis_url())
    event = asyncio.Event()
    watch.add(request_id, event)
    try:
        if new and len(watch.tasks) > 1:  # the first waiter waits for the subscription; if Redis is away, polls
            with suppress(TimeoutError):
                await asyncio.wait_for(watch.live.wait(), settings.REDIS_SOCKET_TIMEOUT_SECONDS)
        yield event
    finally:
        if watch.discard(request_id, event):
            if _watches.get(loop) is watch:
                del _watches[loop]
            await watch.close()


_reread_slots: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Semaphore] = weakref.WeakKeyDictionary()


def _reread_slot() -> asyncio.Semaphore:
    loop = asyncio.get_running_loop()
    slots = _reread_slots.get(loop)
    if slots is None:
        slots = _reread_slots[loop] = asyncio.Semaphore(REREADS_AT_ONCE)
    return slots


async def wait_while_pending(request_id: int, read: Callable[[], Awaitable[T]], is_pending: Callable[[T], bool],
                             seconds: float) -> T:
    """Await `read()` until `is_pending` of its result is false or `seconds` have run out, re-reading
    when woken (by the wake-up or the safety net) and at the deadline; returns the last result.

    `read` should release its database connection: the first read uses the one the request
    already has, and the re-reads, which connect again, run REREADS_AT_ONCE at a time per process,
    so a decision that wakes a hundred waiters does not open a hundred connections at once."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    async with _watching(request_id) as woken:
        first = True
        while True:
            woken.clear()  # before the read: a close committed after it still wakes us
            if first:
                current, first = await read(), False
            else:
                async with _reread_slot():
                    current = await read()
            remaining = deadline - loop.time()
            if not is_pending(current) or remaining <= 0:
                return current
            with suppress(TimeoutError):
                await asyncio.wait_for(woken.wait(), remaining)


def release_connection() -> None:
    """Close this thread's database connection before a wait (outside a transaction): a waiting
    request must not hold one of PostgreSQL's connections for its whole wait."""
    if not connection.in_atomic_block:
        connection.close()
