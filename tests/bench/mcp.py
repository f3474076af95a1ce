"""An MCP tool call against its built-in equivalent: the cost of the MCP hop.

The same unit of work both ways: a GET of a small page from a local HTTP server.
Built in: a :class:`Tool` whose function makes the GET in the worker (a pooled
httpx client, as ``fetch_url`` does). MCP: the ``get`` tool of an MCP server
(tests/support/mcp_server.py, the SDK's own server over streamable HTTP) called
through the worker's hub, as an agent loop calls any MCP tool: the loop's thread
hands the call to the hub's event loop, the SDK sends a JSON-RPC request over HTTP
with the trace context, the server makes the GET and answers. Calls alternate one of
each, so both see the same machine; the ratio is MCP p50 over built-in p50.

In the mesh a reference server adds one more hop (mcp-proxy to its stdio server):
not measured here.
"""

from __future__ import annotations

import statistics
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
from agentmesh_shared.agent import Tool, ToolContext
from agentmesh_shared.mcp import McpHub, mcp_tools, parse_config
from pydantic import BaseModel

from tests.support.chroma_server import free_port
from tests.support.mcp_server import McpServerProcess

PAGE = b"<html><body>" + b"agentmesh bench page " * 50 + b"</body></html>"


class _Page(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # Headers and body leave in two writes: without this, Nagle's algorithm and the
    # client's delayed ACK add 40 ms to some clients' reads, and not to others'.
    disable_nagle_algorithm = True

    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("content-type", "text/html")
        self.send_header("content-length", str(len(PAGE)))
        self.end_headers()
        self.wfile.write(PAGE)

    def log_message(self, format: str, *args: object) -> None:
        return


class GetInput(BaseModel):
    url: str


def bench_mcp(calls: int) -> dict[str, Any]:
    page = ThreadingHTTPServer(("127.0.0.1", 0), _Page)
    threading.Thread(target=page.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{page.server_address[1]}/page"
    server = McpServerProcess(free_port())
    server.start()
    http = httpx.Client(trust_env=False)
    config = parse_config(f"servers:\n  bench:\n    url: {server.url}\n    roles: [researcher]\n")
    hub = McpHub(config.servers)
    try:
        builtin = Tool("get", "GET a URL", GetInput, lambda a, _c: http.get(a.url).text)
        mcp = next(
            t
            for t in mcp_tools(hub, max_chars=100_000, call_timeout_s=30)
            if t.name == "bench__get"
        )
        ctx = ToolContext(task_id="bench", subtask_id=None, tool_use_id="toolu_bench", step=1)
        for tool in (builtin, mcp):  # warm: connections open, code paths loaded
            for _ in range(5):
                assert "agentmesh bench page" in tool.invoke({"url": url}, ctx).content
        samples: dict[str, list[float]] = {"builtin": [], "mcp": []}
        for _ in range(calls):
            for name, tool in (("builtin", builtin), ("mcp", mcp)):
                began = time.perf_counter()
                outcome = tool.invoke({"url": url}, ctx)
                samples[name].append((time.perf_counter() - began) * 1000)
                assert not outcome.is_error, outcome.content
    finally:
        hub.close()
        server.stop()
        http.close()
        page.shutdown()
    builtin_p50 = statistics.median(samples["builtin"])
    mcp_p50 = statistics.median(samples["mcp"])
    return {
        "calls_each": calls,
        "builtin_p50_ms": round(builtin_p50, 2),
        "mcp_p50_ms": round(mcp_p50, 2),
        "mcp_p95_ms": round(sorted(samples["mcp"])[int(calls * 0.95) - 1], 2),
        "added_p50_ms": round(mcp_p50 - builtin_p50, 2),
        "ratio": round(mcp_p50 / builtin_p50, 2),
        "samples": samples,
    }
