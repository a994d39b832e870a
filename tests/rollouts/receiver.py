"""A real local HTTP receiver for the webhook executor, the way a deploy system would implement
one: it checks the HMAC signature (core.signing.verify: the timestamp within 5 minutes), applies
the effect once per Idempotency-Key and answers a repeated key with the stored answer. It can hold
its first answer, so a test can kill the worker while the request is in flight."""

from __future__ import annotations

import json
import threading
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from django.conf import settings

from core import signing
from rollouts.executors import IDEMPOTENCY_HEADER


@dataclass
class Receiver:
    secret: str
    hold_first: bool = False
    # HTTP statuses to answer, in order, before behaving normally (e.g. [503, 503] then 200).
    failures: list[int] = field(default_factory=list)
    requests: list[dict] = field(default_factory=list)
    effects: Counter = field(default_factory=Counter)
    answers: dict[str, bytes] = field(default_factory=dict)
    release: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)
    server: ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/ringfence/rollback"

    def keys(self) -> Counter:
        return Counter(r["key"] for r in self.requests)

    def handle(self, handler: BaseHTTPRequestHandler) -> None:
        body = handler.rfile.read(int(handler.headers.get("Content-Length", 0)))
        key = handler.headers.get(IDEMPOTENCY_HEADER, "")
        signed = signing.verify(self.secret, body, handler.headers)
        with self.lock:
            self.requests.append({"key": key, "signed": signed, "body": json.loads(body or b"{}")})
            first = len(self.requests) == 1
            if not signed:
                status, answer = 401, b'{"error": "bad signature"}'
            elif self.failures:
                status, answer = self.failures.pop(0), b'{"error": "try again"}'
            elif key in self.answers:
                status, answer = 200, self.answers[key]  # a retry: the stored answer, no second effect
            else:
                self.effects[key] += 1
                status, answer = 200, json.dumps({"rolled_back": True, "key": key}).encode()
                self.answers[key] = answer
        if first and self.hold_first:
            self.release.wait(timeout=30)
        handler.send_response(status)
        handler.send_header("Content-Type", "application/json")
        handler.send_header("Content-Length", str(len(answer)))
        handler.end_headers()
        handler.wfile.write(answer)

    def start(self) -> Receiver:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's naming
                try:
                    receiver.handle(self)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the worker that sent it is gone

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        self.release.set()
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()


@contextmanager
def running_receiver(**options: object) -> Iterator[Receiver]:
    """A receiver checking this run's ROLLOUT_WEBHOOK_SECRET, stopped when the block ends."""
    receiver = Receiver(secret=settings.ROLLOUT_WEBHOOK_SECRET, **options).start()
    try:
        yield receiver
    finally:
        receiver.stop()
