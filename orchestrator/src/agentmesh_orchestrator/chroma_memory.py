"""The memory service's store: a Chroma collection over HTTP, behind the memory API.

Only the memory service (``agentmesh_orchestrator.memory_gate``) talks to Chroma;
agents call its narrow memory API (``agentmesh_shared.memory.MemoryClient``).
Embeddings are computed here by the process-wide :class:`MiniLMEmbedder` and sent
with every write and query; Chroma never embeds (the collection has no embedding
function) and never downloads a model. The collection uses cosine space, so
``distance`` is ``1 - cosine similarity``.

Writes are upserts keyed by the note id, so a redelivered task that stores the same
note again leaves one record. Connection errors, timeouts and 5xx answers are retried
a few times with exponential backoff; after that :class:`MemoryUnavailableError` names
the server's URL.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, Final, NamedTuple, TypeVar, cast
from urllib.parse import urlsplit

import httpx
from agentmesh_shared.memory import (
    DEFAULT_COLLECTION,
    MemoryAuthError,
    MemoryHit,
    MetadataValue,
)
from agentmesh_shared.memory.client import RetryPolicy, checked_metadata

from agentmesh_orchestrator.coalesce import Coalescer
from agentmesh_orchestrator.embedding import MiniLMEmbedder, get_embedder

if TYPE_CHECKING:
    from chromadb.api import ClientAPI
    from chromadb.api.models.Collection import Collection

__all__ = ["ChromaMemory"]

log = logging.getLogger(__name__)

T = TypeVar("T")


class _ServerError(Exception):
    """A 5xx answer from the server (or a gateway in front of it): worth retrying."""

    def __init__(self, status: int, body: str) -> None:
        super().__init__(f"HTTP {status}: {body[:200]}")
        self.status = status


class _ConnectFailedError(Exception):
    """Creating the chromadb client failed: its start-up requests did not get through."""


class _CollectionGoneError(Exception):
    """The cached collection no longer exists on the server (wiped or recreated)."""


def _raise_on_5xx(response: httpx.Response) -> None:
    if response.status_code >= 500:
        response.read()
        raise _ServerError(response.status_code, response.text)


_TRANSIENT: Final = (httpx.TransportError, _ServerError, _ConnectFailedError, _CollectionGoneError)


def _is_transient(exc: BaseException) -> bool:
    """Connection errors, timeouts and 5xx answers, however chromadb wrapped them."""
    from chromadb.errors import ChromaError  # noqa: PLC0415 - see _new_client

    seen: set[int] = set()
    cur: BaseException | None = exc
    while cur is not None and id(cur) not in seen:
        seen.add(id(cur))
        if isinstance(cur, _TRANSIENT):
            return True
        if isinstance(cur, ChromaError) and cur.code() >= 500:
            return True
        cur = cur.__cause__ or cur.__context__
    return False


def _parse_url(url: str) -> tuple[str, int, bool]:
    parts = urlsplit(url if "://" in url else f"http://{url}")
    if parts.scheme not in {"http", "https"} or not parts.hostname:
        msg = f"memory URL must look like http://host:8000, got {url!r}"
        raise ValueError(msg)
    ssl = parts.scheme == "https"
    port = parts.port or (443 if ssl else 8000)
    return parts.hostname, port, ssl


def _where(where: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """Chroma wants several equality conditions wrapped in ``$and``; accept the flat form."""
    if not where:
        return None
    if len(where) > 1 and not any(key.startswith("$") for key in where):
        return {"$and": [{key: value} for key, value in where.items()]}
    return dict(where)


class _Note(NamedTuple):
    id: str
    text: str
    metadata: dict[str, MetadataValue]


class _Query(NamedTuple):
    text: str
    where: dict[str, Any] | None
    shape: tuple[int, str]  # k and the filter: a pass asks one query of many vectors


# Notes or queries in one pass at most; and a pass's upsert carries at most this
# much text (a single larger note goes alone).
_PASS_ITEMS: Final = 64
_MAX_PASS_CHARS: Final = 1_000_000


def _note_fits(taken: list[_Note], note: _Note) -> bool:
    """A note joins a pass unless its id is already in it (the upsert's ids must be
    distinct; the later note then goes in the next pass, and wins) or the pass would
    carry too much text."""
    return all(n.id != note.id for n in taken) and (
        sum(len(n.text) for n in taken) + len(note.text) <= _MAX_PASS_CHARS
    )


def _same_shape(taken: list[_Query], query: _Query) -> bool:
    return query.shape == taken[0].shape


def _hits(res: Mapping[str, Any], row: int) -> list[MemoryHit]:
    """The hits of query ``row`` of a query result."""

    def column(name: str) -> list[Any]:
        rows = res.get(name) or []
        return list(rows[row] or []) if row < len(rows) else []

    ids, docs, metas, dists = (column(c) for c in ("ids", "documents", "metadatas", "distances"))
    return [
        MemoryHit(
            id=note_id,
            text=docs[i] if i < len(docs) and docs[i] is not None else "",
            metadata=_hit_metadata(metas[i] if i < len(metas) else None),
            distance=float(dists[i]) if i < len(dists) else None,
        )
        for i, note_id in enumerate(ids)
    ]


def _hit_metadata(raw: Mapping[str, Any] | None) -> dict[str, MetadataValue]:
    if not raw:
        return {}
    return {k: v for k, v in raw.items() if isinstance(v, str | int | float | bool)}


class ChromaMemory:
    """Store and search notes in the Chroma collection.

    ``token`` is sent as ``Authorization: Bearer`` on every request (the memory
    service's authenticating front wants it).

    ``ChromaMemory("http://memory:8000")`` connects on first use, not at construction,
    so a worker starts even while Chroma is still coming up. One instance is safe to
    share between threads.
    """

    def __init__(
        self,
        url: str,
        collection: str = DEFAULT_COLLECTION,
        *,
        embedder: MiniLMEmbedder | None = None,
        attempts: int = 4,
        backoff_initial_s: float = 0.1,
        backoff_max_s: float = 2.0,
        max_retry_s: float = 15.0,
        timeout_s: float = 10.0,
        connect_timeout_s: float = 2.0,
        token: str | None = None,
    ) -> None:
        self._host, self._port, self._ssl = _parse_url(url)
        self.url = f"{'https' if self._ssl else 'http'}://{self._host}:{self._port}"
        self.collection_name = collection
        self._embedder = embedder
        self._retry = RetryPolicy(self.url, attempts, backoff_initial_s, backoff_max_s, max_retry_s)
        self._timeout = httpx.Timeout(timeout_s, connect=connect_timeout_s)
        self._headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._lock = threading.Lock()
        self._client: ClientAPI | None = None
        self._collection: Collection | None = None
        self._stores: Coalescer[_Note, None] = Coalescer(
            self._store_pass, max_items=_PASS_ITEMS, fits=_note_fits
        )
        self._searches: Coalescer[_Query, list[MemoryHit]] = Coalescer(
            self._search_pass, max_items=_PASS_ITEMS, fits=_same_shape
        )

    def __repr__(self) -> str:
        return f"ChromaMemory(url={self.url!r}, collection={self.collection_name!r})"

    # --- public API -----------------------------------------------------------------

    @property
    def embedder(self) -> MiniLMEmbedder:
        if self._embedder is None:
            self._embedder = get_embedder()
        return self._embedder

    def store(self, note_id: str, text: str, metadata: Mapping[str, MetadataValue]) -> None:
        """Insert or replace the note ``note_id`` (idempotent: one record per id)."""
        if not note_id:
            msg = "note_id must not be empty"
            raise ValueError(msg)
        self._stores(_Note(note_id, text, checked_metadata(metadata)))

    def search(
        self, query: str, k: int = 5, where: Mapping[str, Any] | None = None
    ) -> list[MemoryHit]:
        """The ``k`` notes nearest to ``query``, nearest first, optionally filtered by
        metadata (``{"task_id": "t1"}``, or any Chroma ``where`` expression)."""
        if k < 1:
            return []
        flt = _where(where)
        shape = (k, json.dumps(flt, sort_keys=True, default=str))
        return self._searches(_Query(query, flt, shape))

    # Notes stored and queries asked at the same moment go to Chroma as one upsert and
    # one query: one at a time, each cost Chroma ~23 ms (upsert) and ~6 ms (query) of
    # CPU and this process ~4 and ~7 ms, against well under 1 ms each in a batch.

    def _store_pass(self, notes: list[_Note]) -> list[None]:
        embeddings = self.embedder.embed_array([n.text for n in notes])

        def op(col: Collection) -> None:
            col.upsert(
                ids=[n.id for n in notes],
                embeddings=embeddings,
                documents=[n.text for n in notes],
                metadatas=cast("Any", [n.metadata or None for n in notes])
                if any(n.metadata for n in notes)
                else None,
            )

        self._call("store", op)
        return [None] * len(notes)

    def _search_pass(self, queries: list[_Query]) -> list[list[MemoryHit]]:
        embeddings = self.embedder.embed_array([q.text for q in queries])
        k, flt = queries[0].shape[0], queries[0].where

        def op(col: Collection) -> list[list[MemoryHit]]:
            res = col.query(
                query_embeddings=embeddings,
                n_results=k,
                where=cast("Any", flt),
                include=["documents", "metadatas", "distances"],
            )
            return [_hits(res, row) for row in range(len(queries))]

        return self._call("search", op)

    def get(self, note_id: str) -> MemoryHit | None:
        """The note stored under ``note_id``, or ``None``."""

        def op(col: Collection) -> MemoryHit | None:
            res = col.get(ids=[note_id], include=["documents", "metadatas"])
            if not res["ids"]:
                return None
            docs = res.get("documents") or []
            metas = res.get("metadatas") or []
            return MemoryHit(
                id=res["ids"][0],
                text=(docs[0] if docs else None) or "",
                metadata=_hit_metadata(metas[0] if metas else None),
            )

        return self._call("get", op)

    def count(self) -> int:
        """How many notes the collection holds."""
        return self._call("count", lambda col: int(col.count()))

    def heartbeat(self) -> bool:
        """True if the server answers now (one quick try, no retries, never raises)."""
        try:
            client = self._connect()
            client.heartbeat()
        except Exception as exc:  # noqa: BLE001 - a health probe reports, it does not raise
            log.debug("memory heartbeat to %s failed: %s", self.url, exc)
            return False
        return True

    def reset_connection(self) -> None:
        """Forget the connection and collection handle; the next call reconnects."""
        with self._lock:
            self._client = None
            self._collection = None

    # --- internals ------------------------------------------------------------------

    def _connect(self) -> ClientAPI:
        client = self._client
        if client is not None:
            return client
        with self._lock:
            if self._client is None:
                self._client = self._new_client()
            return self._client

    def _new_client(self) -> ClientAPI:
        # chromadb is imported on first connect, not with this module: it takes ~1 s,
        # which processes that never touch memory should not pay at start-up.
        import chromadb  # noqa: PLC0415
        from chromadb.config import Settings  # noqa: PLC0415

        # chromadb's own start-up requests have no timeout (see _tune_http): probe the
        # heartbeat first, with one, so an unreachable host fails fast and retryably.
        probe = httpx.get(
            f"{self.url}/api/v2/heartbeat", timeout=self._timeout, headers=self._headers
        )
        if probe.status_code >= 500:
            raise _ServerError(probe.status_code, probe.text)
        if probe.status_code in {401, 403}:
            raise MemoryAuthError(self.url, probe.text)
        try:
            client = chromadb.HttpClient(
                host=self._host,
                port=self._port,
                ssl=self._ssl,
                headers=self._headers,
                settings=Settings(anonymized_telemetry=False),
            )
        except ValueError as exc:
            # chromadb reports any failure of its start-up requests (connection refused,
            # a 5xx from a gateway, ...) as a ValueError raised while handling the
            # original error: a reason to retry. Other ValueErrors (conflicting
            # settings) are programming errors and pass through.
            if exc.__context__ is None:
                raise
            raise _ConnectFailedError(str(exc)) from exc
        self._tune_http(client)
        return client

    def _tune_http(self, client: ClientAPI) -> None:
        """Bound every request in time and surface 5xx answers as retryable errors.

        chromadb's HTTP client has no timeout at all (a stalled server would hang a
        worker forever) and reports 5xx answers without a recognised body as a bare
        ``Exception``; both are fixed on its httpx session, if it exposes one.
        """
        session = getattr(getattr(client, "_server", None), "_session", None)
        if not isinstance(session, httpx.Client):
            log.warning(
                "chromadb's HTTP session not found; requests to %s have no timeout", self.url
            )
            return
        session.timeout = self._timeout
        hooks = session.event_hooks
        responses = list(hooks.get("response", []))
        if _raise_on_5xx not in responses:
            responses.append(_raise_on_5xx)
            hooks["response"] = responses
            session.event_hooks = hooks

    def _get_collection(self) -> Collection:
        col = self._collection
        if col is not None:
            return col
        client = self._connect()
        with self._lock:
            if self._collection is None:
                self._collection = client.get_or_create_collection(
                    name=self.collection_name,
                    configuration={"hnsw": {"space": "cosine"}},
                    embedding_function=None,
                )
            return self._collection

    def _call(self, operation: str, fn: Callable[[Collection], T]) -> T:
        from chromadb.errors import NotFoundError  # noqa: PLC0415 - see _new_client

        def attempt() -> T:
            col = self._get_collection()
            try:
                return fn(col)
            except NotFoundError as exc:
                # the collection was deleted or the server lost its data: recreate it
                with self._lock:
                    if self._collection is col:
                        self._collection = None
                raise _CollectionGoneError(str(exc)) from exc

        return self._retry.call(operation, attempt, _is_transient)
