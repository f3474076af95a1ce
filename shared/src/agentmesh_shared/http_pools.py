"""HTTP transports that give each thread its own connection pool.

A worker runs one agent loop per thread, and every loop calls the model and the
memory service over HTTP. With one shared pool, each request looks through every
pooled connection to find an idle one (httpcore's pool is a list scanned on every
request and every release): with 60 loops that scan cost ~0.3 ms of CPU a model
call, 15 to 20 % of the SDK's own cost, and it grows with the loops a worker holds.
With a pool per thread a request finds its thread's one connection at once, and a
connection is never handed between threads, so none is ever closed for exceeding a
shared keep-alive quota and opened again.

The transports share one TLS context (loading the CA bundle once per process, not
once per thread); a thread's pool is closed when the thread ends. A thread gives its
CPU turn up while it waits for a reply (:mod:`agentmesh_shared.turns`).
"""

from __future__ import annotations

import contextlib
import ssl
import threading
import weakref
from typing import Any

import httpx
import httpx2

from agentmesh_shared.turns import TURNS

PER_THREAD_LIMITS = {"max_connections": 4, "max_keepalive_connections": 4}
"""One connection per thread in practice; a few more for a thread's rare overlaps."""


class _Held:
    """A thread's transport, closed when the thread ends and drops its locals."""

    __slots__ = ("transport",)

    def __init__(self, transport: Any) -> None:
        self.transport = transport

    def __del__(self) -> None:
        with contextlib.suppress(Exception):
            self.transport.close()


class _PerThread:
    """Keeps one transport per thread, built by ``_new``, and closes them all."""

    def __init__(self) -> None:
        self._local = threading.local()
        self._lock = threading.Lock()
        self._open: weakref.WeakSet[Any] = weakref.WeakSet()
        self._ssl: ssl.SSLContext | None = None

    def _new(self, ssl_context: ssl.SSLContext) -> Any:
        raise NotImplementedError

    def _make_ssl(self) -> ssl.SSLContext:
        raise NotImplementedError

    def _mine(self) -> Any:
        held: _Held | None = getattr(self._local, "held", None)
        if held is None:
            with self._lock:
                if self._ssl is None:
                    self._ssl = self._make_ssl()
                held = _Held(self._new(self._ssl))
                self._open.add(held.transport)
            self._local.held = held
        return held.transport

    def _close_all(self) -> None:
        with self._lock:
            transports = list(self._open)
            self._open.clear()
        for transport in transports:
            transport.close()


class PerThreadTransport(_PerThread, httpx.BaseTransport):
    """For ``httpx.Client(transport=...)``: each calling thread has its own pool."""

    def _make_ssl(self) -> ssl.SSLContext:
        return httpx.create_ssl_context()

    def _new(self, ssl_context: ssl.SSLContext) -> httpx.HTTPTransport:
        return httpx.HTTPTransport(verify=ssl_context, limits=httpx.Limits(**PER_THREAD_LIMITS))

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        transport: httpx.HTTPTransport = self._mine()
        with TURNS.released():  # the network wait: another thread's turn
            return transport.handle_request(request)

    def close(self) -> None:
        self._close_all()


class PerThreadTransport2(_PerThread, httpx2.BaseTransport):
    """The same for ``httpx2`` clients (the anthropic SDK's HTTP library)."""

    def _make_ssl(self) -> ssl.SSLContext:
        return httpx2.create_ssl_context()

    def _new(self, ssl_context: ssl.SSLContext) -> httpx2.HTTPTransport:
        return httpx2.HTTPTransport(verify=ssl_context, limits=httpx2.Limits(**PER_THREAD_LIMITS))

    def handle_request(self, request: httpx2.Request) -> httpx2.Response:
        transport: httpx2.HTTPTransport = self._mine()
        with TURNS.released():  # the network wait: another thread's turn
            return transport.handle_request(request)

    def close(self) -> None:
        self._close_all()
