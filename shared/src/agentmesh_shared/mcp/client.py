"""Connections to MCP servers over streamable HTTP, held by one worker process.

The official ``mcp`` SDK is asynchronous and an agent loop is a thread, so a hub owns
one event loop in a thread of its own, and each server one long-lived connection on
it (the SDK's client must be entered and left by the same task: a holder task does
both). Agent loops call into the hub from their threads; many calls share one
connection. A connection that fails (the server restarted, or is down) is dropped
and the call fails with an error that names the server; the next call connects
again. The W3C trace context goes with every call, in the request's ``_meta`` (the
SDK puts it there) and in the HTTP ``traceparent`` header (set here from it).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import logging
import threading
from collections.abc import Awaitable, Callable
from contextlib import AsyncExitStack, suppress
from dataclasses import dataclass, field
from typing import Any, TypeVar

import httpx2
import mcp_types
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.exceptions import MCPError
from opentelemetry import context as otel_context

from agentmesh_shared.mcp.config import McpServerConfig

log = logging.getLogger("agentmesh.mcp")
T = TypeVar("T")

# Errors about the request itself: the connection is fine, the model can correct it.
_REQUEST_ERRORS = {mcp_types.INVALID_PARAMS, mcp_types.METHOD_NOT_FOUND}


class McpUnavailableError(RuntimeError):
    """The server cannot be reached (or failed mid-call); the message names it."""


@dataclass(frozen=True)
class RemoteTool:
    server: McpServerConfig
    name: str
    description: str
    input_schema: dict[str, Any]


def describe(err: BaseException) -> str:
    """One line for an error, the innermost cause of an exception group."""
    while isinstance(err, BaseExceptionGroup) and err.exceptions:
        err = err.exceptions[0]
    text = str(err) or type(err).__name__
    return f"{type(err).__name__}: {text}" if str(err) else text


async def _trace_header(request: httpx2.Request) -> None:
    """Copy the trace context the SDK put in a message's ``_meta`` into the HTTP headers."""
    if request.method != "POST":
        return
    try:
        body = json.loads(request.content)
    except (ValueError, httpx2.RequestNotRead):
        return
    meta = body.get("params", {}).get("_meta") if isinstance(body, dict) else None
    if isinstance(meta, dict):
        for name in ("traceparent", "tracestate"):
            if isinstance(meta.get(name), str):
                request.headers[name] = meta[name]


@dataclass
class _Connection:
    server: McpServerConfig
    connect_timeout_s: float
    call_timeout_s: float
    client: Client | None = None
    tools: list[RemoteTool] | None = None  # the last listing; kept while disconnected
    error: str | None = "not connected yet"
    reconnecting: bool = False
    _holder: asyncio.Task[None] | None = None
    _closing: asyncio.Event | None = None
    _lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    async def ensure(self) -> Client:
        async with self._lock:
            if self.client is not None and self._holder is not None and not self._holder.done():
                return self.client
            await self._open()
            assert self.client is not None
            return self.client

    async def _open(self) -> None:
        ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._closing = asyncio.Event()
        self._holder = asyncio.create_task(self._hold(ready, self._closing))
        try:
            await asyncio.wait_for(asyncio.shield(ready), self.connect_timeout_s)
        except TimeoutError:
            self._closing.set()
            self._holder.cancel()
            self.error = f"no answer within {self.connect_timeout_s:g}s"
            raise McpUnavailableError(self._unavailable()) from None
        except McpUnavailableError:
            raise
        log.info("mcp server %s connected: %d tools", self.server.name, len(self.tools or []))

    def _unavailable(self) -> str:
        return f"MCP server {self.server.name!r} ({self.server.url}) is not connected: {self.error}"

    async def _hold(self, ready: asyncio.Future[None], closing: asyncio.Event) -> None:
        try:
            async with AsyncExitStack() as stack:
                token = self.server.token()
                http = await stack.enter_async_context(
                    httpx2.AsyncClient(
                        headers={"authorization": f"Bearer {token}"} if token else None,
                        timeout=httpx2.Timeout(self.call_timeout_s, connect=self.connect_timeout_s),
                        event_hooks={"request": [_trace_header]},
                        trust_env=False,
                    )
                )
                client = await stack.enter_async_context(
                    Client(
                        streamable_http_client(str(self.server.url), http_client=http),
                        read_timeout_seconds=self.call_timeout_s,
                        client_info=mcp_types.Implementation(name="agentmesh", version="1"),
                        cache=None,
                    )
                )
                self.tools = await self._list(client)
                self.client, self.error = client, None
                ready.set_result(None)
                await closing.wait()
        except asyncio.CancelledError:
            raise
        except Exception as err:  # noqa: BLE001 - any failure of a third-party server ends its connection
            self.error = describe(err)
            log.warning("mcp server %s: %s", self.server.name, self.error)
            if not ready.done():
                ready.set_exception(McpUnavailableError(self._unavailable()))
        finally:
            self.client = None
            if self.error is None:
                self.error = "the connection closed"

    async def _list(self, client: Client) -> list[RemoteTool]:
        tools: list[RemoteTool] = []
        cursor: str | None = None
        for _ in range(100):
            page = await client.list_tools(cursor=cursor)
            tools.extend(
                RemoteTool(
                    server=self.server,
                    name=t.name,
                    description=t.description or t.title or t.name,
                    input_schema=dict(t.input_schema),
                )
                for t in page.tools
                if self.server.allows(t.name)
            )
            cursor = page.next_cursor
            if cursor is None:
                break
        return tools

    async def call(
        self, tool: str, arguments: dict[str, Any], timeout_s: float
    ) -> mcp_types.CallToolResult:
        client = await self.ensure()
        try:
            return await asyncio.wait_for(
                client.call_tool(tool, arguments, read_timeout_seconds=timeout_s), timeout_s + 1
            )
        except MCPError as err:
            if err.code in _REQUEST_ERRORS:
                raise
            self.error = describe(err)
            await self.drop()
            raise McpUnavailableError(
                f"MCP server {self.server.name!r} failed the call: {self.error}"
            ) from None
        except TimeoutError:
            self.error = f"the call took longer than {timeout_s:g}s"
            await self.drop()
            raise McpUnavailableError(
                f"MCP server {self.server.name!r} did not answer: {self.error}"
            ) from None
        except Exception as err:  # noqa: BLE001 - whatever the transport raised, the model gets a clear error
            self.error = describe(err)
            await self.drop()
            raise McpUnavailableError(
                f"MCP server {self.server.name!r} failed the call: {self.error}"
            ) from None

    async def drop(self) -> None:
        """Close the connection; the next call opens a new one."""
        if self._closing is not None:
            self._closing.set()
        holder, self._holder, self.client = self._holder, None, None
        if holder is not None and not holder.done():
            try:
                await asyncio.wait_for(holder, 5)
            except (TimeoutError, Exception):  # noqa: BLE001 - closing a broken connection
                holder.cancel()


class McpHub:
    """A worker process's connections to the MCP servers granted to its role."""

    def __init__(
        self,
        servers: list[McpServerConfig],
        *,
        connect_timeout_s: float = 10.0,
        call_timeout_s: float = 60.0,
    ) -> None:
        self.servers = {s.name: s for s in servers}
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="mcp-hub", daemon=True)
        self._thread.start()
        self._connections = {
            s.name: _Connection(
                s,
                connect_timeout_s=connect_timeout_s,
                call_timeout_s=s.timeout_s or call_timeout_s,
            )
            for s in servers
        }
        self.connect_timeout_s = connect_timeout_s

    def _run(self, make: Callable[[], Awaitable[T]], timeout_s: float) -> T:
        """Run a coroutine on the hub's loop, in the caller's trace context."""
        ctx = otel_context.get_current()

        async def traced() -> T:
            token = otel_context.attach(ctx)
            try:
                return await make()
            finally:
                otel_context.detach(token)

        future = asyncio.run_coroutine_threadsafe(traced(), self._loop)
        try:
            return future.result(timeout_s)
        except concurrent.futures.TimeoutError:
            future.cancel()
            raise

    def connect_all(self) -> dict[str, str | None]:
        """Connect to every server now; each server's error (None: connected)."""

        async def attempt(conn: _Connection) -> None:
            with suppress(McpUnavailableError):
                await conn.ensure()

        async def every() -> None:
            await asyncio.gather(*(attempt(c) for c in self._connections.values()))

        if self._connections:
            self._run(every, self.connect_timeout_s + 5)
        return {name: c.error for name, c in self._connections.items()}

    def reconnect_in_background(self) -> None:
        """Try the servers that are not connected again, without waiting (the heartbeat)."""
        for conn in self._connections.values():
            # One attempt at a time per server, however long a connect takes.
            if conn.client is None and not conn.reconnecting:
                conn.reconnecting = True

                async def attempt(c: _Connection = conn) -> None:
                    try:
                        with suppress(McpUnavailableError):
                            await c.ensure()
                    finally:
                        c.reconnecting = False

                asyncio.run_coroutine_threadsafe(attempt(), self._loop)

    def status(self) -> dict[str, str]:
        """Per server: "connected", or "not connected: <reason>"."""
        return {
            name: "connected" if c.client is not None else f"not connected: {c.error}"
            for name, c in self._connections.items()
        }

    def tools(self) -> list[RemoteTool]:
        """The tools of every server, from its last listing (connecting if there is none)."""
        missing = [c for c in self._connections.values() if c.tools is None]
        if missing:
            self.connect_all()
        return [t for c in self._connections.values() for t in (c.tools or [])]

    def call(
        self, server: str, tool: str, arguments: dict[str, Any], timeout_s: float
    ) -> mcp_types.CallToolResult:
        """One tool call; :class:`McpUnavailableError` or ``MCPError`` when it fails."""
        conn = self._connections[server]
        budget = timeout_s + self.connect_timeout_s + 5
        try:
            return self._run(lambda: conn.call(tool, arguments, timeout_s), budget)
        except concurrent.futures.TimeoutError:
            msg = f"MCP server {server!r} did not answer within {budget:g}s"
            raise McpUnavailableError(msg) from None

    def close(self) -> None:
        async def every() -> None:
            await asyncio.gather(*(c.drop() for c in self._connections.values()))

        try:
            self._run(every, 10)
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(5)
