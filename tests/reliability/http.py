"""A minimal HTTP client (standard library) that reports how long each request took."""

from __future__ import annotations

import http.client
import json
import time
from dataclasses import dataclass, field


@dataclass
class HttpResponse:
    status: int
    headers: dict[str, str]
    body: bytes
    seconds: float
    error: str = ""
    extra: dict = field(default_factory=dict)

    @property
    def content_type(self) -> str:
        return self.headers.get("content-type", "").split(";")[0].strip()

    def json(self) -> object:
        return json.loads(self.body)


def request(method: str, host: str, port: int, path: str, *, body: bytes | dict | None = None,
            headers: dict[str, str] | None = None, timeout: float = 30) -> HttpResponse:
    """One request on a fresh connection. Transport failures raise OSError (after `timeout`)."""
    headers = dict(headers or {})
    if isinstance(body, dict):
        body = json.dumps(body).encode()
        headers.setdefault("Content-Type", "application/json")
    started = time.monotonic()
    conn = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        conn.request(method, path, body=body, headers=headers)
        response = conn.getresponse()
        data = response.read()
        return HttpResponse(response.status, {k.lower(): v for k, v in response.getheaders()}, data,
                            time.monotonic() - started)
    finally:
        conn.close()
