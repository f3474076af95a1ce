"""Connection pools per thread: the model client and the memory client, over real HTTP."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
from agentmesh_shared.http_pools import PerThreadTransport
from agentmesh_shared.llm import make_client
from agentmesh_shared.llm.scripted_server import ScriptedServer
from agentmesh_shared.settings import Settings


class _PeerHandler(BaseHTTPRequestHandler):
    """Answers with the client's port: one port is one TCP connection."""

    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        body = json.dumps({"port": self.client_address[1]}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def peer_url() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _PeerHandler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def _ports_by_thread(client: httpx.Client, threads: int, calls: int) -> list[set[int]]:
    seen: list[set[int]] = [set() for _ in range(threads)]
    barrier = threading.Barrier(threads)

    def work(i: int) -> None:
        for _ in range(calls):
            barrier.wait()  # every thread's request in flight together
            seen[i].add(client.get("/").json()["port"])

    workers = [threading.Thread(target=work, args=(i,)) for i in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    return seen


def test_each_thread_keeps_its_own_connection(peer_url: str) -> None:
    transport = PerThreadTransport()
    with httpx.Client(base_url=peer_url, transport=transport) as client:
        seen = _ports_by_thread(client, threads=8, calls=5)
        # Each thread used one connection for all its calls, and no other thread's.
        assert all(len(ports) == 1 for ports in seen), seen
        assert len(set().union(*seen)) == 8
        # This thread's pool stays open until the client is closed.
        client.get("/")
        assert len(transport._open) == 1
    assert not transport._open


def test_a_shared_pool_hands_connections_between_threads(peer_url: str) -> None:
    """The behaviour the per-thread transport replaces, to show the test above can fail."""
    with httpx.Client(base_url=peer_url) as client:
        seen = _ports_by_thread(client, threads=8, calls=5)
    assert any(len(ports) > 1 for ports in seen), seen


def test_a_finished_threads_pool_is_closed(peer_url: str) -> None:
    transport = PerThreadTransport()
    kept: list[httpx.HTTPTransport] = []

    def work() -> None:
        client.get("/")
        kept.extend(transport._open)  # held here, so only an explicit close ends it

    with httpx.Client(base_url=peer_url, transport=transport) as client:
        worker = threading.Thread(target=work)
        worker.start()
        worker.join()
        del worker
        (pool,) = kept
        # The thread's kept-alive connection was closed when the thread ended, though
        # its transport is still referenced (the garbage collector cannot have done it).
        assert not pool._pool.connections
        del pool
        kept.clear()
        assert not transport._open  # and it is freed once nothing else holds it


def test_the_model_client_calls_through_a_pool_per_thread(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    server = ScriptedServer(("127.0.0.1", 0))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    ports: list[int] = []
    finish = server.finish_request

    def record(request: Any, client_address: Any) -> None:
        ports.append(client_address[1])
        finish(request, client_address)

    monkeypatch.setattr(server, "finish_request", record)
    monkeypatch.setenv("ANTHROPIC_API_KEY", "k")
    monkeypatch.setenv("ANTHROPIC_BASE_URL", f"http://127.0.0.1:{server.server_address[1]}")
    try:
        client = make_client(Settings(_secrets_dir=tmp_path))  # type: ignore[call-arg]

        def calls() -> None:
            for _ in range(3):
                reply = client.messages.create(
                    model="m", max_tokens=16, messages=[{"role": "user", "content": "hello"}]
                )
                assert reply.content

        workers = [threading.Thread(target=calls) for _ in range(4)]
        for w in workers:
            w.start()
        for w in workers:
            w.join()
        # Twelve calls over four connections: one per thread, each kept alive.
        assert len(ports) == 4
    finally:
        server.shutdown()
        server.server_close()
