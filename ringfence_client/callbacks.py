"""Checking a Ringfence callback on the agent's side (standard library only).

An agent that dispatched with `callback_url=` receives a POST of the approval's JSON when the
request closes. Ringfence signs it with HMAC-SHA256 over `<timestamp>.<body>`, keyed with the hex
SHA-256 of the token that dispatched, so the agent checks it with its own token:

    from ringfence_client.callbacks import verify_callback

    approval = verify_callback(TOKEN, request.headers, request.body)   # raises InvalidCallback
    if approval.outcome == "allow":
        rf.execute(approval.id)                                       # claim it, then act

The same callback may arrive more than once (retries carry the same `Idempotency-Key`); claiming
the execution is what makes acting on it happen once.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from collections.abc import Mapping

from ringfence_client.types import Approval

SIGNATURE_HEADER = "X-Ringfence-Signature"
TIMESTAMP_HEADER = "X-Ringfence-Timestamp"
TOLERANCE_SECONDS = 300


class InvalidCallback(ValueError):
    """Not a callback Ringfence signed with this token just now: refuse it (answer 4xx)."""


def signature(token: str, timestamp: str, body: bytes) -> str:
    key = hashlib.sha256(token.encode("utf-8")).hexdigest().encode("ascii")
    return "v1=" + hmac.new(key, timestamp.encode("ascii") + b"." + body, hashlib.sha256).hexdigest()


def verify_callback(token: str, headers: Mapping[str, str], body: bytes, *, tolerance: float = TOLERANCE_SECONDS,
                    now: float | None = None) -> Approval:
    """The approval a callback carries, once its signature and timestamp check out."""
    lowered = {name.lower(): value for name, value in headers.items()}
    timestamp = lowered.get(TIMESTAMP_HEADER.lower(), "")
    given = lowered.get(SIGNATURE_HEADER.lower(), "")
    if not timestamp.isascii() or not timestamp.isdigit():
        raise InvalidCallback(f"missing or malformed {TIMESTAMP_HEADER}")
    if abs((time.time() if now is None else now) - int(timestamp)) > tolerance:
        raise InvalidCallback(f"{TIMESTAMP_HEADER} is more than {tolerance:g} s away from now")
    if not hmac.compare_digest(signature(token, timestamp, body), given):
        raise InvalidCallback("the signature does not match this token")
    return Approval.from_json(json.loads(body))
