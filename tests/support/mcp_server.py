"""A small MCP server over streamable HTTP, for tests and the bench: the SDK's own server.

    python -m tests.support.mcp_server --port 8765 [--token SECRET]

Tools: ``echo`` (its text back), ``big`` (N characters), ``get`` (a URL's body), ``fail`` (an error result),
``seen_traceparents`` (the ``traceparent`` headers of the HTTP requests it received).
With ``--token`` every request must carry ``Authorization: Bearer SECRET`` (else 401).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, MutableMapping
from pathlib import Path
from typing import Any

import httpx
import uvicorn
from mcp.server import MCPServer
from mcp.server.mcpserver.exceptions import ToolError

ROOT = Path(__file__).resolve().parents[2]
Scope = MutableMapping[str, Any]
ASGIApp = Callable[[Scope, Any, Any], Awaitable[None]]

SEEN: list[str] = []


def build(token: str | None) -> ASGIApp:
    server = MCPServer("test-tools", version="1")
    clients: list[httpx.AsyncClient] = []

    @server.tool(description="Return the text unchanged.")
    def echo(text: str) -> str:
        return text

    @server.tool(description="Return a text of the given length.")
    def big(chars: int) -> str:
        return "x" * chars

    @server.tool(description="GET a URL and return its body (the bench's unit of work).")
    async def get(url: str) -> str:
        if not clients:  # one pooled client, made on the server's own event loop
            clients.append(httpx.AsyncClient(trust_env=False))
        return (await clients[0].get(url)).text

    @server.tool(description="Always fails.")
    def fail(reason: str = "asked to fail") -> str:
        raise ToolError(reason)

    @server.tool(description="The traceparent headers of the requests received so far.")
    def seen_traceparents() -> str:
        return json.dumps(SEEN)

    app = server.streamable_http_app(stateless_http=True)

    async def guarded(scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            headers = {k.decode().lower(): v.decode() for k, v in scope["headers"]}
            if "traceparent" in headers:
                SEEN.append(headers["traceparent"])
            if token is not None and headers.get("authorization") != f"Bearer {token}":
                await send({"type": "http.response.start", "status": 401, "headers": []})
                await send({"type": "http.response.body", "body": b"unauthorized"})
                return
        await app(scope, receive, send)

    return guarded


class McpServerProcess:
    """The server as a child process that a test can stop and start again."""

    def __init__(self, port: int, token: str | None = None) -> None:
        self.port = port
        self.token = token
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/mcp"

    def start(self) -> None:
        args = [sys.executable, "-m", "tests.support.mcp_server", "--port", str(self.port)]
        if self.token:
            args += ["--token", self.token]
        self.proc = subprocess.Popen(args, cwd=ROOT, stderr=subprocess.DEVNULL)
        deadline = time.time() + 30
        while time.time() < deadline:
            try:
                httpx.get(f"http://127.0.0.1:{self.port}/", timeout=1)
                return
            except httpx.HTTPError:
                time.sleep(0.1)
        msg = f"the test MCP server did not start on port {self.port}"
        raise RuntimeError(msg)

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait(10)
            self.proc = None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8765)
    parser.add_argument("--token")
    args = parser.parse_args()
    uvicorn.run(build(args.token), host=args.host, port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
