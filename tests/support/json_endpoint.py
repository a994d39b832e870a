"""A local JSON HTTP server for the metric provider tests: it answers GETs from a list of (status, body,
delay), or with `always` once the list is empty, and records each request (path, query, headers) so a
test can check that Ringfence asked the documented way.

    with json_endpoint() as endpoint:
        endpoint.answer({"score": 0.9})
        ...                                   # point a web or Datadog provider at endpoint.url
        assert endpoint.requests[0]["headers"]["dd-api-key"] == "..."
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit


@dataclass
class Endpoint:
    answers: list[tuple[int, object, float]] = field(default_factory=list)
    always: tuple[int, object, float] = (404, {"error": "nothing"}, 0.0)
    requests: list[dict] = field(default_factory=list)
    server: ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def answer(self, body: object, status: int = 200, delay: float = 0.0) -> None:
        self.answers.append((status, body, delay))


@contextmanager
def json_endpoint() -> Iterator[Endpoint]:
    state = Endpoint()
    lock = threading.Lock()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - http.server's name
            parts = urlsplit(self.path)
            with lock:
                state.requests.append({"path": parts.path, "query": parse_qs(parts.query),
                                       "headers": {k.lower(): v for k, v in self.headers.items()}})
                status, body, delay = state.answers.pop(0) if state.answers else state.always
            data = body if isinstance(body, bytes) else json.dumps(body).encode()
            if delay:
                time.sleep(delay)
            try:
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)
            except OSError:  # the client gave up (a timeout)
                pass

        def log_message(self, *args: object) -> None:
            pass

    state.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=state.server.serve_forever, daemon=True)
    thread.start()
    try:
        yield state
    finally:
        state.server.shutdown()
        state.server.server_close()
        thread.join(timeout=5)
