"""Signed webhooks: the one HMAC-SHA256 scheme of every POST Ringfence sends (the notification
webhook and the rollout webhook executor), each with its own secret.

    X-Ringfence-Timestamp: 1767225600
    X-Ringfence-Signature: v1=<hex hmac_sha256(secret, "1767225600." + body)>

A receiver recomputes the signature over the raw body, compares it in constant time, and refuses
a timestamp too far from its own clock, so a captured request cannot be replayed later.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping

from core import clock

TIMESTAMP_HEADER = "X-Ringfence-Timestamp"
SIGNATURE_HEADER = "X-Ringfence-Signature"
# How far a receiver lets the timestamp stray from its clock, either way.
TOLERANCE_SECONDS = 300


def signature(secret: str, timestamp: str, body: bytes) -> str:
    """`v1=` and the hex HMAC-SHA256 of `<timestamp>.<body>` under `secret`."""
    mac = hmac.new(secret.encode("utf-8"), timestamp.encode("ascii") + b"." + body, hashlib.sha256)
    return "v1=" + mac.hexdigest()


def sign(secret: str, body: bytes, timestamp: int | None = None) -> dict[str, str]:
    """The two headers that sign `body`, stamped `timestamp` (Unix seconds; now by default)."""
    stamp = str(int(clock.now().timestamp()) if timestamp is None else int(timestamp))
    return {TIMESTAMP_HEADER: stamp, SIGNATURE_HEADER: signature(secret, stamp, body)}


def _header(headers: Mapping[str, str], name: str) -> str:
    value = headers.get(name)
    if value is None:  # a plain dict: header names are case-insensitive
        value = next((v for k, v in headers.items() if k.lower() == name.lower()), None)
    return value or ""


def verify(secret: str, body: bytes, headers: Mapping[str, str], *, tolerance: float | None = TOLERANCE_SECONDS,
           now: float | None = None) -> bool:
    """Whether `headers` sign `body` under `secret` with a timestamp within `tolerance` seconds of
    `now` (None: any age). What a receiver runs on the raw body before it parses anything."""
    stamp, given = _header(headers, TIMESTAMP_HEADER), _header(headers, SIGNATURE_HEADER)
    if not stamp.isascii() or not stamp.isdigit() or not given:
        return False
    current = clock.now().timestamp() if now is None else now
    if tolerance is not None and abs(current - int(stamp)) > tolerance:
        return False
    return hmac.compare_digest(signature(secret, stamp, body), given)
