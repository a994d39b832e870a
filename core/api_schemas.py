"""Building blocks for API request schemas shared by the apps' routers.

- `Command`: a request body that refuses unknown fields (a typo is an error, not a default) and
  coerces nothing (pydantic strict mode): `"0.5"` or `true` is not a number, `1` is not a boolean,
  `1.0` is not an integer, `5` is not text. `STRICT` is the same configuration for plain models.
- `Timestamp`: a date-time sent as an RFC 3339 string with its offset (strict mode alone would
  refuse every string, since JSON has no date type; lax mode would also take 1700000000, "1700000000"
  or a space for the `T`). Checked inside pydantic-core: no Python call per value (10,000 samples).
- `JsonObject`: free-form JSON (parameters, evidence) bounded in size and depth, so it can be
  stored, audited and hashed without surprises.
- `Text`: a string without NUL characters (PostgreSQL cannot store them).
- `Finite`: a float that refuses NaN and ±Infinity (the parser already refuses them in bodies;
  this also covers query strings).
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Annotated, Any

from ninja import Schema
from pydantic import AfterValidator, ConfigDict, Field, GetCoreSchemaHandler, GetJsonSchemaHandler
from pydantic_core import core_schema

MAX_JSON_BYTES = 32 * 1024
MAX_JSON_DEPTH = 16


STRICT = ConfigDict(extra="forbid", strict=True)
RFC3339 = r"^[0-9]{4}-[0-9]{2}-[0-9]{2}[Tt][0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]{1,9})?([Zz]|[+-][0-9]{2}:[0-9]{2})$"


class Command(Schema):
    model_config = STRICT


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


class _RFC3339:
    """A string matching RFC3339, then read as an aware datetime; one error whatever went wrong."""

    @classmethod
    def __get_pydantic_core_schema__(cls, source: Any, handler: GetCoreSchemaHandler) -> core_schema.CoreSchema:
        return core_schema.custom_error_schema(
            core_schema.chain_schema([core_schema.str_schema(pattern=RFC3339, strict=True),
                                      core_schema.datetime_schema(tz_constraint="aware", strict=False)]),
            custom_error_type="rfc3339_date_time",
            custom_error_message="Send an RFC 3339 date-time string with its offset, e.g. 2030-01-08T10:00:00Z")

    @classmethod
    def __get_pydantic_json_schema__(cls, schema: core_schema.CoreSchema, handler: GetJsonSchemaHandler) -> dict:
        return {"type": "string", "format": "date-time"}


def _no_nul(value: str) -> str:
    if "\x00" in value:
        raise ValueError("contains a NUL character, which cannot be stored")
    return value


JsonObject = Annotated[dict[str, Any], AfterValidator(_bounded),
                       Field(description=f"A JSON object, at most {MAX_JSON_BYTES // 1024} KB "
                                         f"and {MAX_JSON_DEPTH} levels deep.")]
Finite = Annotated[float, Field(allow_inf_nan=False)]
Text = Annotated[str, AfterValidator(_no_nul)]
Timestamp = Annotated[datetime, _RFC3339]
