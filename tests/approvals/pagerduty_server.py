"""A local HTTP server playing PagerDuty's Events API v2 (POST /v2/enqueue), checking each event the
way PagerDuty documents it, and a plain webhook endpoint that records what it is sent.

PagerDuty answers 202 {"status": "success", "message": "Event processed", "dedup_key": …} to a valid
event and 400 {"status": "invalid event", "errors": [...]} otherwise; it keeps one incident per
dedup_key: a trigger opens it (or adds to the open one), a resolve closes it.
"""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

ROUTING_KEY = "R0123456789abcdef0123456789abcde"  # PagerDuty's integration keys are 32 characters
ACTIONS = ("trigger", "acknowledge", "resolve")
SEVERITIES = ("critical", "error", "warning", "info")


def problems(event: object, routing_keys: set[str]) -> list[str]:
    """What is wrong with an event by the Events API v2 documentation (empty: a valid event)."""
    if not isinstance(event, dict):
        return ["the body is not a JSON object"]
    found = []
    if event.get("routing_key") not in routing_keys:
        found.append("routing_key is not an integration key of this account")
    action = event.get("event_action")
    if action not in ACTIONS:
        found.append(f"event_action must be one of {', '.join(ACTIONS)}")
    dedup = event.get("dedup_key")
    if action != "trigger" and not dedup:
        found.append("dedup_key is required to acknowledge or resolve")
    if dedup is not None and not (isinstance(dedup, str) and 0 < len(dedup) <= 255):
        found.append("dedup_key is a string of at most 255 characters")
    if action == "trigger":
        payload = event.get("payload")
        if not isinstance(payload, dict):
            return [*found, "payload is required to trigger"]
        summary = payload.get("summary")
        if not (isinstance(summary, str) and 0 < len(summary) <= 1024):
            found.append("payload.summary is a string of 1 to 1024 characters")
        if not (isinstance(payload.get("source"), str) and payload["source"]):
            found.append("payload.source is required")
        if payload.get("severity") not in SEVERITIES:
            found.append(f"payload.severity must be one of {', '.join(SEVERITIES)}")
        for name in ("component", "group", "class", "timestamp"):
            if name in payload and not isinstance(payload[name], str):
                found.append(f"payload.{name} is a string")
        if "custom_details" in payload and not isinstance(payload["custom_details"], dict):
            found.append("payload.custom_details is an object")
        for link in event.get("links", []):
            if not (isinstance(link, dict) and isinstance(link.get("href"), str) and link["href"].startswith("http")):
                found.append("links[] need an href")
    return found


class PagerDuty:
    """Records every event it accepts and the incidents they make; `down` answers 503 instead."""

    def __init__(self, routing_keys: set[str] | None = None) -> None:
        self.routing_keys = routing_keys or {ROUTING_KEY}
        self.events: list[dict] = []
        self.refused: list[tuple[dict, list[str]]] = []
        self.incidents: dict[str, str] = {}  # dedup_key → "triggered" | "resolved"
        self.down = False
        self.lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's naming
                body = self.rfile.read(int(self.headers["Content-Length"]))
                if server.down:
                    return self._answer(503, {"status": "unavailable"})
                if self.path != "/v2/enqueue" or self.headers.get("Content-Type") != "application/json":
                    return self._answer(404, {"status": "not found"})
                try:
                    event = json.loads(body)
                except ValueError:
                    return self._answer(400, {"status": "invalid event", "errors": ["not JSON"]})
                wrong = problems(event, server.routing_keys)
                with server.lock:
                    if wrong:
                        server.refused.append((event, wrong))
                        return self._answer(400, {"status": "invalid event", "message": "Event object is invalid",
                                                  "errors": wrong})
                    server.events.append(event)
                    key = event["dedup_key"]
                    if event["event_action"] == "trigger":
                        server.incidents[key] = "triggered"
                    elif event["event_action"] == "resolve" and key in server.incidents:
                        server.incidents[key] = "resolved"
                return self._answer(202, {"status": "success", "message": "Event processed", "dedup_key": key})

            def _answer(self, status: int, body: dict) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v2/enqueue"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def actions(self) -> list[tuple[str, str]]:
        return [(e["event_action"], e["dedup_key"]) for e in self.events]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class Webhook:
    """An endpoint that records the JSON it is posted and answers 200."""

    def __init__(self) -> None:
        self.received: list[dict] = []
        hook = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's naming
                body = self.rfile.read(int(self.headers["Content-Length"]))
                hook.received.append({"path": self.path, "headers": dict(self.headers), "body": json.loads(body)})
                self.send_response(200)
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.base = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def url(self, path: str) -> str:
        return f"{self.base}{path}"

    def events(self, path: str | None = None) -> list[str]:
        return [r["body"]["metadata"]["event_type"] for r in self.received if path is None or r["path"] == path]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
