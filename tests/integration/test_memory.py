"""MemoryClient through the real memory service, in front of a real Chroma (``chroma run``).

The agents' client speaks only the memory service's narrow API; the service embeds
and talks to Chroma. Every call here goes that whole way.
"""

from __future__ import annotations

import http.server
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
from agentmesh_orchestrator.chroma_memory import ChromaMemory
from agentmesh_shared.memory import (
    MemoryAuthError,
    MemoryClient,
    MemoryClientError,
    MemoryHit,
    MemoryUnavailableError,
)

from tests.support.chroma_server import free_port, start_chroma, start_memory_service

pytestmark = pytest.mark.integration


TOKEN = "memory-test-token"


@pytest.fixture(scope="module")
def chroma_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    data_dir = tmp_path_factory.mktemp("chroma") / "data"
    with start_chroma(free_port(), data_dir) as url:
        yield url


@pytest.fixture(scope="module")
def service_url(chroma_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with start_memory_service(chroma_url, tmp_path_factory.mktemp("memory"), TOKEN) as url:
        yield url


@pytest.fixture
def memory(service_url: str) -> MemoryClient:
    # a fresh collection per test, so counts and rankings do not leak between tests
    return MemoryClient(service_url, collection=f"test-{uuid.uuid4().hex[:12]}", token=TOKEN)


NOTES = {
    "n-redis": "Redis keeps its data durable with an append-only file (AOF) fsynced every second.",
    "n-bread": "To bake sourdough bread, feed the starter the night before and proof the dough.",
    "n-seccomp": "A seccomp profile restricts which Linux system calls a container may make.",
    "n-football": "The football club signed a new striker before the transfer window closed.",
}


def _fill(memory: MemoryClient, task_id: str = "t-1") -> None:
    for note_id, text in NOTES.items():
        memory.store(note_id, text, {"task_id": task_id, "agent": "researcher", "step": 1})


def test_store_then_search_ranks_the_related_note_first(memory: MemoryClient) -> None:
    _fill(memory)
    hits = memory.search("how does redis persist data to disk?", k=3)
    assert next(h.id for h in hits) == "n-redis"
    assert len(hits) == 3
    top = hits[0]
    assert isinstance(top, MemoryHit)
    assert top.text == NOTES["n-redis"]
    assert top.metadata == {"task_id": "t-1", "agent": "researcher", "step": 1}
    assert top.distance is not None
    assert 0.0 <= top.distance < hits[1].distance  # type: ignore[operator]

    # an unrelated query ranks something else first, and the redis note is far from it
    other = memory.search("recipe for baking bread at home", k=4)
    assert other[0].id == "n-bread"
    redis_hit = next(h for h in other if h.id == "n-redis")
    assert redis_hit.distance is not None
    assert redis_hit.distance > other[0].distance  # type: ignore[operator]
    assert memory.search("which system calls can a container use?", k=1)[0].id == "n-seccomp"


def test_storing_the_same_note_twice_keeps_one_record(memory: MemoryClient) -> None:
    memory.store("n-1", "first version of the note", {"task_id": "t-1"})
    memory.store("n-1", "first version of the note", {"task_id": "t-1"})
    assert memory.count() == 1
    # a redelivery with changed content replaces the record, still one
    memory.store("n-1", "second version of the note", {"task_id": "t-1", "attempt": 2})
    assert memory.count() == 1
    got = memory.get("n-1")
    assert got is not None
    assert got.text == "second version of the note"
    assert got.metadata == {"task_id": "t-1", "attempt": 2}
    assert memory.get("missing") is None


def test_where_filters_by_task_id(memory: MemoryClient) -> None:
    memory.store("a-redis", NOTES["n-redis"], {"task_id": "task-a"})
    memory.store("b-redis", NOTES["n-redis"] + " Also RDB snapshots.", {"task_id": "task-b"})
    memory.store("b-bread", NOTES["n-bread"], {"task_id": "task-b"})

    hits = memory.search("redis persistence", k=5, where={"task_id": "task-a"})
    assert [h.id for h in hits] == ["a-redis"]
    hits = memory.search("redis persistence", k=5, where={"task_id": "task-b"})
    assert {h.id for h in hits} == {"b-redis", "b-bread"}
    assert hits[0].id == "b-redis"
    assert memory.search("redis persistence", where={"task_id": "task-none"}) == []
    # several keys are combined with $and
    memory.store("b-redis-2", "redis AOF rewrite", {"task_id": "task-b", "agent": "coder"})
    hits = memory.search("redis", k=5, where={"task_id": "task-b", "agent": "coder"})
    assert [h.id for h in hits] == ["b-redis-2"]


def test_empty_collection_and_k_larger_than_count(memory: MemoryClient) -> None:
    assert memory.count() == 0
    assert memory.search("anything") == []
    memory.store("only", "the only note", {"task_id": "t"})
    assert [h.id for h in memory.search("note", k=10)] == ["only"]


def test_heartbeat(memory: MemoryClient) -> None:
    assert memory.heartbeat() is True


def test_clients_share_the_collection(service_url: str) -> None:
    name = f"test-{uuid.uuid4().hex[:12]}"
    writer = MemoryClient(service_url, name, token=TOKEN)
    reader = MemoryClient(service_url, name, token=TOKEN)
    writer.store("shared-1", "agents share one memory", {"task_id": "t"})
    assert reader.count() == 1
    assert reader.search("shared memory of agents", k=1)[0].id == "shared-1"


def test_unreachable_url_raises_memory_unavailable_quickly() -> None:
    url = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    client = MemoryClient(url)
    assert client.heartbeat() is False
    started = time.monotonic()
    with pytest.raises(MemoryUnavailableError) as err:
        client.store("n", "text", {"task_id": "t"})
    elapsed = time.monotonic() - started
    assert elapsed < 10.0
    assert url in str(err.value)
    assert err.value.attempts == 4
    with pytest.raises(MemoryUnavailableError):
        client.search("text")


def test_a_server_that_never_answers_times_out() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(16)  # connections complete in the backlog, nothing ever answers
        url = f"http://127.0.0.1:{sock.getsockname()[1]}"
        client = MemoryClient(url, attempts=2, timeout_s=0.5, connect_timeout_s=0.5)
        started = time.monotonic()
        with pytest.raises(MemoryUnavailableError) as err:
            client.search("anything")
        assert time.monotonic() - started < 5.0
        assert "Timeout" in str(err.value)


class _Always503(http.server.BaseHTTPRequestHandler):
    requests = 0

    def _answer(self) -> None:
        type(self).requests += 1
        body = b"upstream unavailable"
        self.send_response(503)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = _answer  # noqa: N815

    def log_message(self, format: str, *args: object) -> None:
        pass


def test_5xx_is_retried_then_reported() -> None:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Always503)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}"
        client = MemoryClient(url, attempts=3)
        with pytest.raises(MemoryUnavailableError) as err:
            client.count()
        assert err.value.attempts == 3
        assert _Always503.requests >= 3
        assert url in str(err.value)
    finally:
        server.shutdown()
        server.server_close()


def test_a_chroma_restart_behind_the_service_is_survived(tmp_path: Path) -> None:
    """The service and its client outlive a restart of Chroma (same data directory)."""
    port, data = free_port(), tmp_path / "data"
    with start_memory_service(f"http://127.0.0.1:{port}", tmp_path / "service", TOKEN) as url:
        client = MemoryClient(url, "restart-test", token=TOKEN)
        with start_chroma(port, data):
            client.store("r-1", "written before the restart", {"task_id": "t"})
        with start_chroma(port, data):
            assert client.count() == 1
            assert client.search("before the restart", k=1)[0].id == "r-1"


def test_the_service_wants_its_token(service_url: str) -> None:
    with pytest.raises(MemoryAuthError, match="chroma_token"):
        MemoryClient(service_url, token="wrong").count()
    with pytest.raises(MemoryAuthError):
        MemoryClient(service_url).search("anything")
    assert MemoryClient(service_url, token="wrong").heartbeat() is False
    assert MemoryClient(service_url, token=TOKEN).heartbeat() is True


def test_chromas_own_api_is_not_reachable_through_the_service(service_url: str) -> None:
    """An agent holding the token can store and search notes, nothing more of Chroma."""
    auth = {"Authorization": f"Bearer {TOKEN}"}
    collections = "/api/v2/tenants/default_tenant/databases/default_database/collections"
    with httpx.Client(base_url=service_url, headers=auth, trust_env=False) as http:
        assert http.get("/api/v2/heartbeat").status_code == 404
        assert http.get(collections).status_code == 404
        assert http.delete(f"{collections}/agentmesh-memory").status_code in {404, 405}
        assert http.post("/api/v2/reset").status_code == 404


def test_bad_requests_get_the_services_reason(memory: MemoryClient) -> None:
    memory.store("n", "a note", {"task_id": "t"})
    with pytest.raises(MemoryClientError, match="422") as err:
        memory.search("note", where={"$bogus": [1]})
    assert not isinstance(err.value, MemoryUnavailableError)
    with pytest.raises(MemoryClientError, match="422"):
        memory.store("big", "x" * 100_001, {})
    with pytest.raises(MemoryClientError, match="422"):
        MemoryClient(memory.url, "no", token=TOKEN).count()  # not a collection name
    assert memory.count() == 1


def test_notes_and_queries_asked_at_once_reach_chroma_together(chroma_url: str) -> None:
    """A burst of stores goes to Chroma as a few upserts, and a burst of searches as a
    few queries, with every caller getting what it would have got alone."""
    memory = ChromaMemory(chroma_url, collection=f"test-{uuid.uuid4().hex[:12]}")
    passes: dict[str, list[int]] = {"store": [], "search": []}
    for name, coalescer in (("store", memory._stores), ("search", memory._searches)):
        run = coalescer._run

        def counted(items: list[Any], run: Any = run, name: str = name) -> Any:
            passes[name].append(len(items))
            time.sleep(0.05)  # the burst's other callers queue behind this pass
            return run(items)

        coalescer._run = counted  # type: ignore[method-assign]
    topics = ["redis persistence", "sourdough bread", "seccomp filters", "football transfers"]

    def store(i: int) -> None:
        # ids repeat within the burst: a pass's upsert must carry distinct ids
        memory.store(f"n-{i % 24}", f"note {i % 24} on {topics[i % 4]}", {"topic": i % 4})

    with ThreadPoolExecutor(max_workers=30) as pool:
        list(pool.map(store, range(30)))
    assert sum(passes["store"]) == 30
    assert len(passes["store"]) < 30, passes
    assert memory.count() == 24

    # Queries of two shapes (k and filter): each pass asks one shape.
    asks = [(topics[i % 4], 2 + i % 2, {"topic": i % 4} if i % 3 else None) for i in range(30)]
    alone = [[h.id for h in memory.search(q, k=k, where=w)] for q, k, w in asks]
    passes["search"].clear()
    with ThreadPoolExecutor(max_workers=30) as pool:
        together = list(pool.map(lambda a: [h.id for h in memory.search(*a)], asks))
    assert together == alone
    assert sum(passes["search"]) == 30
    assert len(passes["search"]) < 30, passes
