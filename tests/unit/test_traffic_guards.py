"""The pure parts of the traffic guards: envelope checks, credential keys, dead-letter form."""

from __future__ import annotations

import asyncio
import json
import random
from typing import Any

import pytest
from agentmesh_orchestrator.auth import BearerAuthMiddleware
from agentmesh_orchestrator.limits import credential_key
from agentmesh_shared import deadletter
from agentmesh_shared.broker_transport import envelope_problem

from tests.support import junk

TRANSPORT_REJECTS = {
    "JSON without envelope",
    "JSON not an object",
    "broken properties",
    "body not base64",
    "headers not an object",
}
CELERY_REJECTS = {"body not JSON", "unknown task name", "invalid payload", "pickle body"}


@pytest.mark.parametrize("shape", sorted(TRANSPORT_REJECTS | CELERY_REJECTS))
def test_envelope_check_rejects_malformed_envelopes_and_passes_well_formed_ones(shape: str) -> None:
    raw = junk.SHAPES[shape](random.Random(1), "research")
    problem = envelope_problem(json.loads(raw))
    if shape in TRANSPORT_REJECTS:
        assert problem is not None and ("envelope" in problem or "undecodable" in problem)
    else:
        assert problem is None, problem  # Celery rejects these, and dead-letters them


def test_a_real_kombu_envelope_passes() -> None:
    assert envelope_problem(json.loads(junk.envelope("code", b"[[], {}, {}]"))) is None


def test_credential_key_is_the_verified_token_else_the_address() -> None:
    """Through the real token check: each accepted token is a credential of its own,
    a refused token never reaches the limits, and open probes count by address."""
    seen: list[str] = []
    sent: list[int] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        seen.append(credential_key(scope))

    async def send(message: Any) -> None:
        if message["type"] == "http.response.start":
            sent.append(message["status"])

    async def receive() -> Any:
        return {"type": "http.request"}

    guard = BearerAuthMiddleware(app, token="abc\n# a comment\nabd\n")

    def call(path: str, token: bytes | None) -> None:
        headers = [(b"authorization", b"Bearer " + token)] if token else []
        scope = {"type": "http", "path": path, "headers": headers, "client": ("10.0.0.1", 5)}
        asyncio.run(guard(scope, receive, send))

    call("/tasks", b"abc")
    call("/tasks", b"abd")
    call("/tasks", b"abe")  # refused: 401, the limits never see it
    call("/healthz", None)
    assert sent == [401]
    first, second, probe = seen
    assert first.startswith("token:") and "abc" not in first
    assert first != second
    assert probe == "addr:10.0.0.1"


def test_dead_letter_payloads_keep_bytes_bounded() -> None:
    assert deadletter._printable(b"plain") == {"payload": "plain"}
    binary = deadletter._printable(b"\xff" * 100_000)
    assert binary["payload_bytes"] == 100_000
    assert len(str(binary["payload_base64"])) <= deadletter.MAX_PAYLOAD_CHARS
    long_text = deadletter._printable("z" * 50_000)
    assert long_text["payload_chars"] == 50_000
