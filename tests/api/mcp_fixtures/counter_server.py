"""A tiny MCP server for the gate's tests: each tool adds one to a named counter in COUNTER_FILE
(a JSON object), so a test can count how often the wrapped tool really ran."""

from __future__ import annotations

import json
import os
from pathlib import Path

from mcp.server.mcpserver import MCPServer
from mcp.server.mcpserver.exceptions import ToolError

server = MCPServer("counter")


def bump(name: str) -> int:
    path = Path(os.environ["COUNTER_FILE"])
    counts = json.loads(path.read_text()) if path.exists() else {}
    counts[name] = counts.get(name, 0) + 1
    path.write_text(json.dumps(counts))
    return counts[name]


@server.tool()
def refund(order: str, amount: str, note: str = "") -> str:
    """Refund an order (counts under "refund")."""
    return f"refunded {amount} on {order}; run {bump('refund')}"


@server.tool()
def send_receipt(order: str) -> str:
    """Send a receipt (counts under "send_receipt")."""
    return f"receipt for {order}; run {bump('send_receipt')}"


@server.tool()
def wire_money(account: str) -> str:
    """Wire money (counts under "wire_money")."""
    return f"wired to {account}; run {bump('wire_money')}"


@server.tool()
def explode(order: str) -> str:
    """Fail after counting (counts under "explode")."""
    bump("explode")
    raise ToolError(f"could not process {order}")


@server.tool()
def read_counter(name: str) -> int:
    """Not listed in the gate's config: hidden by it."""
    path = Path(os.environ["COUNTER_FILE"])
    return (json.loads(path.read_text()) if path.exists() else {}).get(name, 0)


if __name__ == "__main__":
    server.run("stdio")
