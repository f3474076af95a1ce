"""``python -m agentmesh_orchestrator.memory_gate``: the memory service agents call.

Chroma 1.x (its Rust server) has no authentication of its own, so it sits on a
network only this service reaches. Agents get a narrow memory API instead of Chroma's
(see ``agentmesh_shared.memory.client`` for the calls): store a note, search, get
one, count. The service checks ``Authorization: Bearer <token>`` (the ``chroma_token``
secret, compared in constant time) on every call but ``/healthz``, embeds the text
with the MiniLM model it holds (so no agent image carries an embedding stack), and
talks to Chroma itself. Nothing else of Chroma's API (deleting a collection, listing
tenants, resetting) is reachable from an agent.

Settings: ``AGENTMESH_MEMORY_GATE_UPSTREAM`` (Chroma's URL),
``AGENTMESH_MEMORY_GATE_HOST``/``_PORT`` (where the service listens), the token from
the ``chroma_token`` secret or ``CHROMA_TOKEN``. Request bodies are bounded
(``AGENTMESH_MEMORY_GATE_MAX_BODY_MB``), and so is every field of a call.
"""

from __future__ import annotations

import hmac
import logging
import sys
import threading
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Annotated, Any, TypeVar

from agentmesh_shared.heap import freeze_startup_heap
from agentmesh_shared.logs import setup_logging
from agentmesh_shared.memory import MemoryClientError, MemoryHit, MemoryUnavailableError
from agentmesh_shared.memory.client import MetadataValue
from agentmesh_shared.settings import Settings, SettingsError, settings_or_exit
from fastapi import Depends, FastAPI, HTTPException, Path, Request, Response
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from agentmesh_orchestrator.chroma_memory import ChromaMemory
from agentmesh_orchestrator.http_serve import serve

log = logging.getLogger("agentmesh.memory_gate")
T = TypeVar("T")

UNAUTHORIZED = (
    "missing or wrong memory token: send 'Authorization: Bearer <token>' with the token "
    "in the chroma_token secret (CHROMA_TOKEN)"
)
Collection = Annotated[
    str,
    Path(
        pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{1,61}[A-Za-z0-9]$",
        description="Chroma's collection name rules: 3-63 characters",
    ),
]


class NoteIn(BaseModel):
    id: str = Field(min_length=1, max_length=512)
    text: str = Field(max_length=100_000)
    metadata: dict[str, MetadataValue] = Field(default_factory=dict, max_length=64)


class SearchIn(BaseModel):
    query: str = Field(min_length=1, max_length=20_000)
    k: int = Field(5, ge=1, le=100)
    where: dict[str, Any] | None = Field(
        None, description="a Chroma metadata filter; flat {key: value} pairs are ANDed"
    )


class SearchOut(BaseModel):
    hits: list[MemoryHit]


class CountOut(BaseModel):
    count: int


class BodyLimit:
    """ASGI middleware: a request body over ``max_bytes`` gets a 413, unread further."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        chunks: list[bytes] = []
        size = 0
        while True:
            message: Message = await receive()
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_bytes:
                reply = JSONResponse(
                    {"detail": f"request body over {self.max_bytes} bytes"}, status_code=413
                )
                await reply(scope, receive, send)
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        sent = False

        async def replay() -> Message:
            nonlocal sent
            if sent:
                return await receive()  # the disconnect, when it comes
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}

        await self.app(scope, replay, send)


class Stores:
    """One :class:`ChromaMemory` per collection, made on first use (thread-safe)."""

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream
        self._lock = threading.Lock()
        self._stores: dict[str, ChromaMemory] = {}

    def __call__(self, collection: str) -> ChromaMemory:
        with self._lock:
            store = self._stores.get(collection)
            if store is None:
                store = self._stores[collection] = ChromaMemory(self.upstream, collection)
            return store


def create_gate(settings: Settings) -> ASGIApp:
    """The memory service's app; :class:`SettingsError` when it has no token."""
    token = settings.chroma_token.get_secret_value() if settings.chroma_token else ""
    if not token:
        msg = (
            "the memory token is not set: run scripts/secrets.sh (make up does) to create "
            "secrets/chroma_token, or set CHROMA_TOKEN"
        )
        raise SettingsError(msg)
    expected = token.encode()
    stores = Stores(str(settings.memory_gate_upstream).rstrip("/"))

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        from agentmesh_orchestrator.embedding import get_embedder  # noqa: PLC0415 - heavy

        def warm_up() -> None:
            # The model and the Chroma client load before the first call, not during
            # it (together seconds on a busy host: longer than a readiness probe
            # waits). Chroma being down now is no reason not to start.
            get_embedder().embed_array(["warm-up"])
            stores(settings.memory_collection).heartbeat()

        await run_in_threadpool(warm_up)
        freeze_startup_heap()
        yield

    app = FastAPI(
        title="agentmesh memory service",
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
    )

    def authorized(request: Request) -> None:
        scheme, _, presented = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(
            presented.strip().encode(), expected
        ):
            raise HTTPException(
                status_code=401,
                detail=UNAUTHORIZED,
                headers={"WWW-Authenticate": 'Bearer realm="memory"'},
            )

    async def call(fn: Callable[[], T]) -> T:
        try:
            return await run_in_threadpool(fn)
        except MemoryUnavailableError as err:
            log.warning("memory store unavailable: %s", err)
            raise HTTPException(status_code=503, detail=str(err)) from None
        except (ValueError, TypeError) as err:
            # chromadb's own validation: a malformed where filter, say
            raise HTTPException(status_code=422, detail=f"Chroma refused it: {err}") from None
        except MemoryClientError as err:
            raise HTTPException(status_code=502, detail=str(err)) from None

    guarded = [Depends(authorized)]

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/v1/heartbeat", dependencies=guarded)
    async def heartbeat() -> Response:
        up = await run_in_threadpool(stores(settings.memory_collection).heartbeat)
        return JSONResponse(
            {"status": "ok" if up else "the memory store does not answer"},
            status_code=200 if up else 503,
        )

    @app.post("/v1/collections/{collection}/notes", status_code=204, dependencies=guarded)
    async def store(collection: Collection, note: NoteIn) -> Response:
        await call(lambda: stores(collection).store(note.id, note.text, note.metadata))
        return Response(status_code=204)

    @app.post("/v1/collections/{collection}/search", dependencies=guarded)
    async def search(collection: Collection, query: SearchIn) -> SearchOut:
        hits = await call(lambda: stores(collection).search(query.query, query.k, query.where))
        return SearchOut(hits=hits)

    @app.get("/v1/collections/{collection}/notes/{note_id}", dependencies=guarded)
    async def get(collection: Collection, note_id: str) -> MemoryHit:
        hit = await call(lambda: stores(collection).get(note_id))
        if hit is None:
            raise HTTPException(status_code=404, detail=f"no note {note_id!r} in {collection}")
        return hit

    @app.get("/v1/collections/{collection}/count", dependencies=guarded)
    async def count(collection: Collection) -> CountOut:
        return CountOut(count=await call(stores(collection).count))

    return BodyLimit(app, settings.memory_gate_max_body_mb * 1024 * 1024)


def main() -> int:
    setup_logging("memory-gate")
    settings = settings_or_exit("memory-gate")
    try:
        gate = create_gate(settings)
    except SettingsError as err:
        print(f"memory-gate: {err}", file=sys.stderr)
        return 2
    serve(gate, settings.memory_gate_host, settings.memory_gate_port)
    return 0


if __name__ == "__main__":
    sys.exit(main())
