"""Request bodies read exactly as the API documents them, each refusal a named problem.

- Media type: `application/json` where JSON is expected (415 `unsupported_media_type` naming
  `Content-Type`); a `charset` parameter, when sent, must be `utf-8` (415 too).
- Bytes: UTF-8 without a byte order mark (400 `malformed_body`, naming the first bad byte);
  UTF-16 and UTF-32, which Python's `json.loads(bytes)` would guess and accept, are refused.
- Text: RFC 8259 JSON (400 `malformed_body`, line and column); finite numbers only (422
  `non_finite_number` naming each field: NaN, ±Infinity, literals such as `1e309`); every
  object's member names unique (422 `duplicate_key` naming each repeated member, where
  `json.loads` would keep the last value silently); no escaped lone surrogate (`"\\ud800"`),
  which is no character and no UTF-8 text can hold (400 `malformed_body` naming the field).
"""

from __future__ import annotations

import codecs
import json
import math
import re
from collections.abc import Callable
from typing import Any

from core.problems import FieldError, Problem

JSON_MEDIA_TYPE = "application/json"
UTF8_NAMES = frozenset({"utf-8", "utf8"})
BOMS = (codecs.BOM_UTF8, codecs.BOM_UTF32_LE, codecs.BOM_UTF32_BE, codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)
MAX_FIELD_ERRORS = 20
BODY = "(body)"
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")


def check_media_type(content_type: str, params: dict[str, str], accepted: tuple[str, ...] = (JSON_MEDIA_TYPE,)) -> str:
    """The media type, lowercased, when it is one of `accepted` with no charset but UTF-8."""
    media_type = (content_type or "").strip().lower()
    if media_type not in accepted:
        refused = f"{media_type or 'No media type'} is not accepted."
        raise Problem(415, "unsupported_media_type", f"Send the body as {', '.join(accepted)}.",
                      errors=[FieldError("Content-Type", refused, "header")])
    charset = {k.lower(): v for k, v in params.items()}.get("charset")
    if charset is not None and charset.strip().strip('"').lower() not in UTF8_NAMES:
        raise Problem(415, "unsupported_media_type", "Send the body as UTF-8 (charset=utf-8, or no charset).",
                      errors=[FieldError("Content-Type", f"charset={charset} is not accepted.", "header")])
    return media_type


def _malformed(detail: str, message: str, field: str = BODY, kind: str = "malformed") -> Problem:
    return Problem(400, "malformed_body", detail, errors=[FieldError(field, message, "body", kind)])


def decode(raw: bytes, *, utf8_bom: bool = False) -> str:
    """The body as text: UTF-8, strictly, without a byte order mark (YAML allows UTF-8's: `utf8_bom`)."""
    if utf8_bom and raw.startswith(codecs.BOM_UTF8):
        return decode(raw[len(codecs.BOM_UTF8):])
    if raw.startswith(BOMS):
        raise _malformed("The body starts with a byte order mark; send UTF-8 without one.",
                         "Starts with a byte order mark.", kind="utf8")
    if (encoding := json.detect_encoding(raw)) != "utf-8":  # RFC 4627's NUL pattern of UTF-16 or UTF-32
        raise _malformed(f"The body looks like {encoding.upper()}; send UTF-8.", "Not UTF-8.", kind="utf8")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise _malformed("The body is not valid UTF-8.", f"Byte {exc.start} is not valid UTF-8.", kind="utf8") from None


class _Duplicated(Exception):
    pass


def _unique_members(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    members = dict(pairs)
    if len(members) != len(pairs):
        raise _Duplicated
    return members


class _Members(dict):
    """An object parsed on the refusal path, remembering the names it repeated."""

    repeated: list[str]


def _remember_repeats(pairs: list[tuple[str, Any]]) -> _Members:
    members, seen = _Members(pairs), set()
    members.repeated = []
    for name, _ in pairs:
        if name in seen:
            members.repeated.append(name)
        seen.add(name)
    return members


def paths_where(data: Any, found: Callable[[Any], list[str]], limit: int = MAX_FIELD_ERRORS) -> list[str]:
    """Dotted paths (list indices as numbers) for which `found(value)` names something, iteratively:
    `found` returns the names of the value's own offending members ("" for the value itself)."""
    paths: list[str] = []
    stack: list[tuple[str, Any]] = [("", data)]
    while stack and len(paths) < limit:
        path, value = stack.pop()
        for name in found(value):
            paths.append(".".join(p for p in (path, name) if p) or BODY)
        if isinstance(value, dict):
            stack.extend((f"{path}.{k}" if path else str(k), v) for k, v in value.items())
        elif isinstance(value, list):
            stack.extend((f"{path}.{i}" if path else str(i), v) for i, v in enumerate(value))
    return sorted(paths[:limit])


class _NonFinite:
    """Stands in for NaN, ±Infinity and overflowing literals until the parsed body is checked."""

    __slots__ = ("literal",)

    def __init__(self, literal: str) -> None:
        self.literal = literal


def _not_utf8(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def loads(text: str) -> Any:
    """Strict JSON text (see the module docstring); raises a Problem naming what was refused."""
    non_finite: list[_NonFinite] = []  # the tree is searched for their paths only when there are any

    def stand_in(literal: str) -> _NonFinite:
        non_finite.append(value := _NonFinite(literal))
        return value

    def parse_float(literal: str) -> float | _NonFinite:
        value = float(literal)
        return value if math.isfinite(value) else stand_in(literal)

    def parse(hook: Callable[[list[tuple[str, Any]]], dict]) -> Any:
        return json.loads(text, object_pairs_hook=hook, parse_constant=stand_in, parse_float=parse_float)

    try:
        try:
            data = parse(_unique_members)
        except _Duplicated:
            paths = paths_where(parse(_remember_repeats), lambda v: getattr(v, "repeated", []))
            raise Problem(422, "duplicate_key", "An object names the same member twice; send each member once.",
                          errors=[FieldError(path, "Sent more than once.", "body", "duplicate_key") for path in paths]
                          ) from None
    except json.JSONDecodeError as exc:
        raise _malformed(f"The body is not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}.",
                         f"{exc.msg} (line {exc.lineno}, column {exc.colno}).", kind="json") from None
    except RecursionError:
        raise _malformed("The body nests too deeply.", "Nests too deeply.", kind="json") from None
    except ValueError:  # e.g. an integer literal longer than Python converts
        raise _malformed("The body could not be read as JSON.", "A value could not be read.", kind="json") from None
    if non_finite:
        paths = paths_where(data, lambda v: [""] if isinstance(v, _NonFinite) else [])
        raise Problem(422, "non_finite_number",
                      "Numbers must be finite: NaN, Infinity and overflowing values are refused.",
                      errors=[FieldError(path, "Not a finite number.", "body", "finite_number") for path in paths])
    if _SURROGATE_ESCAPE.search(text):  # a pair is fine; a lone half is not text
        def bad(value: Any) -> list[str]:
            if isinstance(value, str):
                return [""] if _not_utf8(value) else []
            return [k for k in value if _not_utf8(k)] if isinstance(value, dict) else []

        if paths := paths_where(data, bad):
            raise Problem(400, "malformed_body", "A string holds an escaped lone surrogate, which is no character.",
                          errors=[FieldError(path, "Not a character (a lone UTF-16 surrogate).", "body", "utf8")
                                  for path in paths])
    return data


def parse(raw: bytes, content_type: str, params: dict[str, str]) -> Any:
    """A JSON request body: media type, charset, UTF-8 bytes, then strict JSON text."""
    check_media_type(content_type, params)
    return loads(decode(raw))
