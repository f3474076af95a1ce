"""The agents' side of the shared memory: the memory service's narrow HTTP API.

Agents never talk to Chroma. The memory service (``agentmesh_orchestrator.memory_gate``)
holds the embedding model and the Chroma client and offers four calls on a collection,
each behind its bearer token (the ``chroma_token`` secret)::

    POST /v1/collections/{name}/notes        {"id", "text", "metadata"}   upsert, 204
    POST /v1/collections/{name}/search       {"query", "k", "where"}      {"hits": [...]}
    GET  /v1/collections/{name}/notes/{id}                                a hit, or 404
    GET  /v1/collections/{name}/count                                     {"count": n}

So an agent image carries no embedding stack and no Chroma client, and a compromised
agent can store and search notes, not drop collections or read Chroma's admin API.

Writes are upserts keyed by the note id, so a redelivered task that stores the same
note again leaves one record. Connection errors, timeouts and 5xx answers are retried
a few times with exponential backoff; after that :class:`MemoryUnavailableError` names
the service's URL. A refused token is :class:`MemoryAuthError`, a request the service
rejects (a bad ``where`` filter, say) :class:`MemoryClientError` with its reason.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final, TypeVar
from urllib.parse import quote, urlsplit

import httpx
from pydantic import BaseModel, ConfigDict, Field
from tenacity import (
    RetryCallState,
    RetryError,
    Retrying,
    retry_if_exception,
    stop_after_attempt,
    stop_after_delay,
    wait_exponential,
)

from agentmesh_shared.http_pools import PerThreadTransport

__all__ = [
    "DEFAULT_COLLECTION",
    "MemoryAuthError",
    "MemoryClient",
    "MemoryClientError",
    "MemoryHit",
    "MemoryUnavailableError",
    "MetadataValue",
]

log = logging.getLogger(__name__)

DEFAULT_COLLECTION: Final = "agentmesh-memory"
T = TypeVar("T")
MetadataValue = str | int | float | bool


class MemoryClientError(RuntimeError):
    """Base class of the memory client's errors; alone, a request the service refused."""


class MemoryUnavailableError(MemoryClientError):
    """The memory service could not be reached, or kept failing, after the retries."""

    def __init__(
        self, url: str, operation: str, attempts: int, cause: BaseException | None
    ) -> None:
        reason = f"{type(cause).__name__}: {cause}" if cause is not None else "unknown error"
        super().__init__(
            f"memory service at {url} is unavailable: {operation} failed after "
            f"{attempts} attempt(s) ({reason})"
        )
        self.url = url
        self.operation = operation
        self.attempts = attempts


class MemoryAuthError(MemoryClientError):
    """The memory service refused the client's token (or the client sent none)."""

    def __init__(self, url: str, detail: str) -> None:
        super().__init__(
            f"memory service at {url} refused the request (401): {detail[:200]}; "
            "the token is the chroma_token secret (CHROMA_TOKEN)"
        )
        self.url = url


class MemoryHit(BaseModel):
    """One note from memory. ``distance`` is the cosine distance to the query (``None``
    for a direct :meth:`MemoryClient.get`)."""

    model_config = ConfigDict(frozen=True)

    id: str
    text: str
    metadata: dict[str, MetadataValue] = Field(default_factory=dict)
    distance: float | None = None


class _RetryableError(Exception):
    """A 5xx answer, or no answer: worth another try."""


@dataclass(frozen=True)
class RetryPolicy:
    """Bounded retries with exponential backoff, for the memory client and the memory
    service's own Chroma client alike: ``attempts`` tries within ``max_retry_s``, then
    :class:`MemoryUnavailableError` naming ``url`` and the last error."""

    url: str
    attempts: int = 4
    backoff_initial_s: float = 0.1
    backoff_max_s: float = 2.0
    max_retry_s: float = 15.0

    def __post_init__(self) -> None:
        if self.attempts < 1:
            msg = "attempts must be >= 1"
            raise ValueError(msg)

    def call(
        self, operation: str, attempt: Callable[[], T], retry_if: Callable[[BaseException], bool]
    ) -> T:
        """``attempt()`` until it returns, raises what ``retry_if`` refuses, or the
        policy is spent."""

        def before_sleep(state: RetryCallState) -> None:
            exc = state.outcome.exception() if state.outcome else None
            log.warning(
                "memory %s to %s failed (attempt %d/%d): %s; retrying",
                operation,
                self.url,
                state.attempt_number,
                self.attempts,
                exc,
            )

        retrying = Retrying(
            stop=stop_after_attempt(self.attempts) | stop_after_delay(self.max_retry_s),
            wait=wait_exponential(
                multiplier=self.backoff_initial_s,
                min=self.backoff_initial_s,
                max=self.backoff_max_s,
            ),
            retry=retry_if_exception(retry_if),
            before_sleep=before_sleep,
            reraise=False,
        )
        try:
            return retrying(attempt)
        except RetryError as err:
            last = err.last_attempt
            cause = last.exception() if last.failed else None
            raise MemoryUnavailableError(self.url, operation, last.attempt_number, cause) from cause


def _base_url(url: str) -> str:
    parts = urlsplit(url if "://" in url else f"http://{url}")
    if parts.scheme not in {"http", "https"} or not parts.hostname:
        msg = f"memory URL must look like http://host:8000, got {url!r}"
        raise ValueError(msg)
    port = parts.port or (443 if parts.scheme == "https" else 8000)
    return f"{parts.scheme}://{parts.hostname}:{port}"


def checked_metadata(metadata: Mapping[str, MetadataValue]) -> dict[str, MetadataValue]:
    """``metadata`` as a plain dict; :class:`TypeError` naming a key of another type."""
    out: dict[str, MetadataValue] = {}
    for key, value in metadata.items():
        if not isinstance(key, str) or not isinstance(value, str | int | float | bool):
            msg = (
                f"metadata values must be str, int, float or bool; {key!r} is "
                f"{type(value).__name__}"
            )
            raise TypeError(msg)
        out[key] = value
    return out


def _detail(response: httpx.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return response.text[:500]
    detail = body.get("detail", body) if isinstance(body, dict) else body
    return str(detail)[:500]


class MemoryClient:
    """Store and search notes through the memory service.

    The time limits are generous on purpose: one memory service embeds for every
    worker, and under a burst (1,000 tasks at once) its answers queue for tens of
    seconds. A short read timeout turned that queue into failed subtasks (973 of
    1,000 in ``make bench``) and into retries the service still had to work
    through; with these defaults all 1,000 succeeded. The subtask's own timeout
    still bounds a loop that waits on memory.

    ``token`` is sent as ``Authorization: Bearer`` on every request. The client
    connects on first use, not at construction, so a worker starts even while the
    memory service is still coming up. One instance is safe to share between threads
    (one pooled httpx client).
    """

    def __init__(
        self,
        url: str,
        collection: str = DEFAULT_COLLECTION,
        *,
        attempts: int = 4,
        backoff_initial_s: float = 0.1,
        backoff_max_s: float = 2.0,
        max_retry_s: float = 90.0,
        timeout_s: float = 45.0,
        connect_timeout_s: float = 2.0,
        token: str | None = None,
    ) -> None:
        self.url = _base_url(url)
        self.collection_name = collection
        self._prefix = f"/v1/collections/{quote(collection, safe='')}"
        self._retry = RetryPolicy(self.url, attempts, backoff_initial_s, backoff_max_s, max_retry_s)
        self._timeout = httpx.Timeout(timeout_s, connect=connect_timeout_s)
        self._headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._lock = threading.Lock()
        self._http: httpx.Client | None = None

    def __repr__(self) -> str:
        return f"MemoryClient(url={self.url!r}, collection={self.collection_name!r})"

    # --- public API -----------------------------------------------------------------

    def store(self, note_id: str, text: str, metadata: Mapping[str, MetadataValue]) -> None:
        """Insert or replace the note ``note_id`` (idempotent: one record per id)."""
        if not note_id:
            msg = "note_id must not be empty"
            raise ValueError(msg)
        body = {"id": note_id, "text": text, "metadata": checked_metadata(metadata)}
        self._call("store", "POST", "/notes", json=body)

    def search(
        self, query: str, k: int = 5, where: Mapping[str, Any] | None = None
    ) -> list[MemoryHit]:
        """The ``k`` notes nearest to ``query``, nearest first, optionally filtered by
        metadata (``{"task_id": "t1"}``, or any Chroma ``where`` expression)."""
        if k < 1:
            return []
        body = {"query": query, "k": k, "where": dict(where) if where else None}
        answer = self._call("search", "POST", "/search", json=body)
        assert answer is not None
        return [MemoryHit.model_validate(hit) for hit in answer.json()["hits"]]

    def get(self, note_id: str) -> MemoryHit | None:
        """The note stored under ``note_id``, or ``None``."""
        answer = self._call("get", "GET", f"/notes/{quote(note_id, safe='')}", missing_ok=True)
        return None if answer is None else MemoryHit.model_validate(answer.json())

    def count(self) -> int:
        """How many notes the collection holds."""
        answer = self._call("count", "GET", "/count")
        assert answer is not None
        return int(answer.json()["count"])

    def heartbeat(self) -> bool:
        """True if the service and its store answer now (one quick try, never raises)."""
        try:
            response = self._client().get("/v1/heartbeat")
        except httpx.HTTPError as exc:
            log.debug("memory heartbeat to %s failed: %s", self.url, exc)
            return False
        return response.status_code == 200

    def reset_connection(self) -> None:
        """Close the pooled connections; the next call opens new ones."""
        with self._lock:
            http, self._http = self._http, None
        if http is not None:
            http.close()

    # --- internals ------------------------------------------------------------------

    def _client(self) -> httpx.Client:
        http = self._http
        if http is not None:
            return http
        with self._lock:
            if self._http is None:
                self._http = httpx.Client(
                    base_url=self.url,
                    headers=self._headers,
                    timeout=self._timeout,
                    # A pool per agent loop's thread (see http_pools).
                    transport=PerThreadTransport(),
                    trust_env=False,  # inside the mesh: never through the egress proxy
                )
            return self._http

    def _call(
        self,
        operation: str,
        method: str,
        path: str,
        *,
        json: Mapping[str, Any] | None = None,
        missing_ok: bool = False,
    ) -> httpx.Response | None:
        def attempt() -> httpx.Response | None:
            try:
                response = self._client().request(method, self._prefix + path, json=json)
            except httpx.TransportError as err:
                raise _RetryableError(f"{type(err).__name__}: {err}") from err
            if response.status_code >= 500:
                raise _RetryableError(f"HTTP {response.status_code}: {_detail(response)}")
            if response.status_code == 401:
                raise MemoryAuthError(self.url, _detail(response))
            if response.status_code == 404 and missing_ok:
                return None
            if response.status_code >= 400:
                msg = (
                    f"memory service at {self.url} refused {operation} "
                    f"({response.status_code}): {_detail(response)}"
                )
                raise MemoryClientError(msg)
            return response

        return self._retry.call(operation, attempt, lambda exc: isinstance(exc, _RetryableError))
