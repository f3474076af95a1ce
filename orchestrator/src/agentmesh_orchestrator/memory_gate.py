"""``python -m agentmesh_orchestrator.memory_gate``: the memory service's authenticating front.

Chroma 1.x (its Rust server) has no authentication of its own, so it sits on a
network that only this gate reaches; the gate checks ``Authorization: Bearer <token>``
(the ``chroma_token`` secret, compared in constant time) on every request and forwards
it unchanged, minus the token, to Chroma. ``/healthz`` answers without a token
(it says only that the gate is up). A request without the right token gets a 401
with a sentence and never reaches Chroma.

Settings: ``AGENTMESH_MEMORY_GATE_UPSTREAM`` (Chroma's URL),
``AGENTMESH_MEMORY_GATE_HOST``/``_PORT`` (where the gate listens), the token from the
``chroma_token`` secret or ``CHROMA_TOKEN``. Request bodies are bounded
(``AGENTMESH_MEMORY_GATE_MAX_BODY_MB``).
"""

from __future__ import annotations

import hmac
import json
import logging
import sys
from collections.abc import Iterable

import httpx
import uvicorn
from agentmesh_shared.logs import setup_logging
from agentmesh_shared.settings import Settings, SettingsError, settings_or_exit
from starlette.types import Message, Receive, Scope, Send

log = logging.getLogger("agentmesh.memory_gate")

UNAUTHORIZED = (
    "missing or wrong memory token: send 'Authorization: Bearer <token>' with the token "
    "in the chroma_token secret (CHROMA_TOKEN)"
)
# Hop-by-hop headers (RFC 9110 7.6.1) and what the gate sets itself.
_DROP = frozenset(
    {
        b"authorization",
        b"connection",
        b"keep-alive",
        b"proxy-authenticate",
        b"proxy-authorization",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
        b"host",
        b"content-length",
    }
)
# Uvicorn sets date and server itself; the body is re-framed, so transfer-encoding goes.
_DROP_REPLY = (_DROP - {b"content-length"}) | {b"date", b"server"}


async def _reply(
    send: Send, status: int, detail: str, extra: Iterable[tuple[bytes, bytes]] = ()
) -> None:
    body = json.dumps({"detail": detail} if status != 200 else {"status": detail}).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                *extra,
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


class MemoryGate:
    """An ASGI app: token check, then a streaming forward to ``upstream``."""

    def __init__(self, upstream: str, token: str, *, max_body_bytes: int) -> None:
        if not token:
            msg = (
                "the memory token is not set: run scripts/secrets.sh (make up does) to create "
                "secrets/chroma_token, or set CHROMA_TOKEN"
            )
            raise SettingsError(msg)
        self.upstream = upstream.rstrip("/")
        self._token = token.encode()
        self._max_body = max_body_bytes
        self._http: httpx.AsyncClient | None = None

    def _authorized(self, scope: Scope) -> bool:
        for name, value in scope.get("headers", ()):
            if name == b"authorization":
                scheme, _, presented = bytes(value).partition(b" ")
                return scheme.lower() == b"bearer" and hmac.compare_digest(
                    presented.strip(), self._token
                )
        return False

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        if scope["path"] == "/healthz":
            await _reply(send, 200, "ok")
            return
        if not self._authorized(scope):
            await _reply(send, 401, UNAUTHORIZED, [(b"www-authenticate", b'Bearer realm="memory"')])
            return
        body = await self._body(receive)
        if body is None:
            await _reply(send, 413, f"request body over {self._max_body} bytes")
            return
        await self._forward(scope, body, send)

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                self._http = httpx.AsyncClient(
                    base_url=self.upstream,
                    timeout=httpx.Timeout(60.0, connect=5.0),
                    trust_env=False,
                )
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                if self._http is not None:
                    await self._http.aclose()
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def _body(self, receive: Receive) -> bytes | None:
        chunks: list[bytes] = []
        size = 0
        while True:
            message: Message = await receive()
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self._max_body:
                return None
            chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks)

    async def _forward(self, scope: Scope, body: bytes, send: Send) -> None:
        assert self._http is not None, "lifespan startup did not run"
        headers = [
            (name.decode("latin-1"), value.decode("latin-1"))
            for name, value in scope["headers"]
            if name not in _DROP
        ]
        query = scope.get("query_string", b"").decode("latin-1")
        url = scope["path"] + (f"?{query}" if query else "")
        request = self._http.build_request(scope["method"], url, headers=headers, content=body)
        try:
            response = await self._http.send(request, stream=True)
        except httpx.HTTPError as err:
            log.warning("memory upstream %s failed: %s", self.upstream, err)
            await _reply(send, 502, f"memory service unreachable: {type(err).__name__}")
            return
        try:
            await send(
                {
                    "type": "http.response.start",
                    "status": response.status_code,
                    "headers": [
                        (name, value)
                        for name, value in response.headers.raw
                        if name.lower() not in _DROP_REPLY
                    ],
                }
            )
            async for chunk in response.aiter_raw():
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
            await send({"type": "http.response.body", "body": b""})
        finally:
            await response.aclose()


def create_gate(settings: Settings) -> MemoryGate:
    token = settings.chroma_token.get_secret_value() if settings.chroma_token else ""
    return MemoryGate(
        str(settings.memory_gate_upstream),
        token,
        max_body_bytes=settings.memory_gate_max_body_mb * 1024 * 1024,
    )


def main() -> int:
    setup_logging("memory-gate")
    settings = settings_or_exit("memory-gate")
    try:
        gate = create_gate(settings)
    except SettingsError as err:
        print(f"memory-gate: {err}", file=sys.stderr)
        return 2
    uvicorn.run(
        gate,
        host=settings.memory_gate_host,
        port=settings.memory_gate_port,
        log_config=None,
        access_log=False,
        timeout_graceful_shutdown=10,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
