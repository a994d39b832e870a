"""Starting Ringfence's MCP server (or gate) as a stdio subprocess, as an agent host does."""

from __future__ import annotations

import asyncio
import json
import os
import sys
import tempfile
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, TypeVar

from django.db import connection
from mcp import ClientSession
from mcp.client.stdio import StdioServerParameters, stdio_client

T = TypeVar("T")
ROOT = Path(__file__).resolve().parents[2]


def command(*args: str, env: dict[str, str]) -> StdioServerParameters:
    return StdioServerParameters(command=sys.executable, args=["-m", "ringfence_client.mcp", *args], cwd=str(ROOT),
                                 env={"PYTHONPATH": str(ROOT), **env})


@asynccontextmanager
async def session(params: StdioServerParameters) -> AsyncIterator[ClientSession]:
    with tempfile.TemporaryFile("w+") as errlog:
        async with stdio_client(params, errlog=errlog) as (read, write), ClientSession(read, write) as client:
            await client.initialize()
            yield client


def answer(result: Any) -> Any:
    """A tool result's JSON value (structured content when the tool declares it)."""
    assert not result.is_error, result.content
    if result.structured_content is not None:
        value = result.structured_content
        return value.get("result", value) if set(value) == {"result"} else value
    return json.loads(result.content[0].text)


def error_text(result: Any) -> str:
    assert result.is_error, result
    return result.content[0].text


def problem_of(result: Any) -> dict:
    """The problem detail a refused tool call carries (after the SDK's "Error executing tool …: ")."""
    text = error_text(result)
    return json.loads(text[text.index("{"):])


async def orm(read: Callable[[], T]) -> T:
    """Run ORM code from async test code: in a thread, whose connection is closed afterwards."""
    def run() -> T:
        try:
            return read()
        finally:
            connection.close()

    return await asyncio.to_thread(run)


def ringfence_env(live_server, agent) -> dict[str, str]:
    return {"RINGFENCE_URL": live_server.url, "RINGFENCE_TOKEN": agent.token, "PATH": os.environ.get("PATH", "")}
