"""Building blocks for API request schemas shared by the apps' routers.

- `Command`: a request body that refuses unknown fields (a typo is an error, not a default).
- `JsonObject`: free-form JSON (parameters, evidence) bounded in size and depth, so it can be
  stored, audited and hashed without surprises.
- `Text`: a string without NUL characters (PostgreSQL cannot store them).
- `Finite`: a float that refuses NaN and ±Infinity (the parser already refuses them in bodies;
  this also covers query strings).
"""

from __future__ import annotations

import json
from typing import Annotated, Any

from ninja import Schema
from pydantic import AfterValidator, ConfigDict, Field

MAX_JSON_BYTES = 32 * 1024
MAX_JSON_DEPTH = 16


class Command(Schema):
    model_config = ConfigDict(extra="forbid")


def _depth(value: Any) -> int:
    deepest, stack = 0, [(value, 1)]
    while stack:
        item, depth = stack.pop()
        deepest = max(deepest, depth)
        if isinstance(item, dict):
            stack.extend((v, depth + 1) for v in item.values())
        elif isinstance(item, list):
            stack.extend((v, depth + 1) for v in item)
    return deepest


def _bounded(value: dict[str, Any]) -> dict[str, Any]:
    if _depth(value) > MAX_JSON_DEPTH:
        raise ValueError(f"nests deeper than {MAX_JSON_DEPTH} levels")
    if len(json.dumps(value, allow_nan=False, ensure_ascii=False).encode()) > MAX_JSON_BYTES:
        raise ValueError(f"is larger than {MAX_JSON_BYTES // 1024} KB of JSON")
    if any("\x00" in text for text in _strings(value)):
        raise ValueError("contains a NUL character, which cannot be stored")
    return value


def _strings(value: Any) -> list[str]:
    found, stack = [], [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            found.append(item)
        elif isinstance(item, dict):
            found.extend(item)
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return found


def _no_nul(value: str) -> str:
    if "\x00" in value:
        raise ValueError("contains a NUL character, which cannot be stored")
    return value


JsonObject = Annotated[dict[str, Any], AfterValidator(_bounded),
                       Field(description=f"A JSON object, at most {MAX_JSON_BYTES // 1024} KB "
                                         f"and {MAX_JSON_DEPTH} levels deep.")]
Finite = Annotated[float, Field(allow_inf_nan=False)]
Text = Annotated[str, AfterValidator(_no_nul)]
