"""python -m ringfence_client.mcp [--http PORT]  |  python -m ringfence_client.mcp gate --config gate.yaml"""

from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m ringfence_client.mcp",
                                     description="Ringfence as MCP tools (stdio, or streamable HTTP with --http).")
    parser.add_argument("--http", type=int, metavar="PORT", help="serve streamable HTTP on this port (path /mcp)")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on with --http (default 127.0.0.1)")
    commands = parser.add_subparsers(dest="command")
    gate = commands.add_parser("gate", help="re-expose another MCP server's tools, each call asked of Ringfence")
    gate.add_argument("--config", required=True, help="the gate's YAML (or JSON) file")
    args = parser.parse_args(argv)

    if args.command == "gate":
        import anyio

        from ringfence_client.mcp.gate import GateConfig, GateConfigError, run_gate

        try:
            config = GateConfig.load(args.config)
        except (OSError, ValueError, GateConfigError) as error:
            sys.exit(f"{args.config}: {error}")
        anyio.run(run_gate, config)
    else:
        from ringfence_client.mcp.server import serve

        serve(http_port=args.http, host=args.host)


if __name__ == "__main__":
    main()
