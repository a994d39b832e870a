"""Ringfence over the Model Context Protocol (the `mcp` extra): a server whose tools ask Ringfence
(`python -m ringfence_client.mcp`), and a gate that puts another MCP server's tools behind Ringfence
(`python -m ringfence_client.mcp gate --config gate.yaml`)."""
