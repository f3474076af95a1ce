"""The model gateway as a real process between the real SDK and real upstreams.

Upstreams: the scripted Messages-API server, and a small recording server that shows
which credential reached it. Usage lands in a real redis-server.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import anthropic
import httpx
import pytest
from agentmesh_shared.llm import ModelStatus
from agentmesh_shared.settings import load_settings

from tests.support.mesh import GATEWAY_TOKENS, LocalMesh, wait_until

TOKENS = GATEWAY_TOKENS
VENDOR_KEY = "sk-vendor-key-held-by-the-gateway-only"


class Recorder(BaseHTTPRequestHandler):
    """An upstream that answers one fixed message and keeps the headers it was sent."""

    seen: list[dict[str, str]] = []  # noqa: RUF012 - shared by the server's threads

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("content-length") or 0))
        Recorder.seen.append({k.lower(): v for k, v in self.headers.items()})
        body = json.dumps(
            {
                "id": "msg_1",
                "type": "message",
                "role": "assistant",
                "model": "m",
                "content": [{"type": "text", "text": "recorded"}],
                "stop_reason": "end_turn",
                "stop_sequence": None,
                "usage": {"input_tokens": 7, "output_tokens": 3},
            }
        ).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@dataclass
class Gateways:
    mesh: LocalMesh
    scripted: str  # a gateway in front of the scripted model
    recorded: str  # a gateway in front of the recording upstream
    keyless: str  # a gateway without a vendor key


@pytest.fixture(scope="module")
def gateways(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateways]:
    root = Path(tmp_path_factory.mktemp("gateway"))
    mesh = LocalMesh(root=root)
    recorder = ThreadingHTTPServer(("127.0.0.1", 0), Recorder)
    threading.Thread(target=recorder.serve_forever, daemon=True).start()
    try:
        mesh.start_redis()
        mesh.start_llm()
        yield Gateways(
            mesh=mesh,
            scripted=mesh.start_gateway("gateway", vendor_key=VENDOR_KEY),
            recorded=mesh.start_gateway(
                "gateway-rec",
                upstream=f"http://127.0.0.1:{recorder.server_address[1]}",
                vendor_key=VENDOR_KEY,
            ),
            keyless=mesh.start_gateway("gateway-nokey", vendor_key=""),
        )
    finally:
        recorder.shutdown()
        mesh.stop()


def _client(url: str, token: str) -> anthropic.Anthropic:
    return anthropic.Anthropic(api_key=token, base_url=url, max_retries=0)


def _ask(client: anthropic.Anthropic, text: str, **extra: Any) -> anthropic.types.Message:
    return client.messages.create(
        model="m", max_tokens=64, messages=[{"role": "user", "content": text}], **extra
    )


def test_a_service_token_is_swapped_for_the_vendor_key(gateways: Gateways) -> None:
    Recorder.seen.clear()
    reply = _ask(
        _client(gateways.recorded, TOKENS["researcher"]),
        "hello",
        extra_headers={"x-agentmesh-task-id": "task-1"},
    )
    assert reply.content[0].text == "recorded"  # type: ignore[union-attr]
    (headers,) = Recorder.seen
    assert headers["x-api-key"] == VENDOR_KEY
    assert TOKENS["researcher"] not in json.dumps(headers)
    assert "x-agentmesh-task-id" not in headers and "authorization" not in headers


def test_unknown_credentials_get_401_and_the_upstream_is_not_called(gateways: Gateways) -> None:
    Recorder.seen.clear()
    for key in ("sk-ant-guessed", VENDOR_KEY, ""):
        with pytest.raises(anthropic.AuthenticationError) as caught:
            _ask(_client(gateways.recorded, key or "x"), "hello")
        assert "unknown credential" in str(caught.value)
    assert Recorder.seen == []


def test_calls_and_streams_are_counted_per_role_and_task(gateways: Gateways) -> None:
    r = gateways.mesh.redis()
    before = r.hgetall("agentmesh:gateway:usage:coder")
    client = _client(gateways.scripted, TOKENS["coder"])
    headers = {"x-agentmesh-task-id": "task-usage"}
    reply = _ask(client, "count me", extra_headers=headers)
    with client.messages.stream(
        model="m",
        max_tokens=64,
        messages=[{"role": "user", "content": "stream me please"}],
        extra_headers=headers,
    ) as stream:
        deltas = [e for e in stream if e.type == "content_block_delta"]
        final = stream.get_final_message()
    assert len(deltas) > 2 and "stream me please" in final.content[0].text  # type: ignore[union-attr]

    def counted() -> bool:
        return int(r.hget("agentmesh:gateway:task:task-usage", "coder.calls") or 0) == 2

    wait_until(counted, "both calls to be counted", timeout=10)
    per_task = r.hgetall("agentmesh:gateway:task:task-usage")
    expected_in = reply.usage.input_tokens + final.usage.input_tokens
    expected_out = reply.usage.output_tokens + final.usage.output_tokens
    assert int(per_task["coder.input_tokens"]) == expected_in
    assert int(per_task["coder.output_tokens"]) == expected_out
    after = r.hgetall("agentmesh:gateway:usage:coder")
    assert int(after["calls"]) - int(before.get("calls", 0)) == 2
    usage = httpx.get(
        gateways.scripted + "/usage",
        params={"task": "task-usage"},
        headers={"x-api-key": TOKENS["orchestrator"]},
    ).json()
    assert usage["task"]["coder.calls"] == 2
    assert httpx.get(gateways.scripted + "/usage").status_code == 401


def test_without_a_vendor_key_calls_fail_with_the_fix_and_status_says_so(
    gateways: Gateways,
) -> None:
    with pytest.raises(anthropic.InternalServerError) as caught:
        _ask(_client(gateways.keyless, TOKENS["orchestrator"]), "hello")
    assert caught.value.status_code == 503 and "secrets/anthropic_api_key" in str(caught.value)
    status = ModelStatus(
        load_settings(gateway_token=TOKENS["orchestrator"], anthropic_base_url=gateways.keyless)
    )
    problem = status.problem()
    assert problem is not None and "secrets/anthropic_api_key" in problem
    ready = ModelStatus(
        load_settings(gateway_token=TOKENS["orchestrator"], anthropic_base_url=gateways.scripted)
    )
    assert ready.problem() is None
