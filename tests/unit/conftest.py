"""Fixtures shared by unit tests."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest
from agentmesh_shared.llm.scripted_server import ScriptedServer


@pytest.fixture
def scripted() -> Iterator[ScriptedServer]:
    """The scripted Messages-API server on a free port, for one test (its delay and
    injected failures can be changed without touching other tests)."""
    server = ScriptedServer(("127.0.0.1", 0))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server
    server.shutdown()
    server.server_close()
