from __future__ import annotations

import threading
from collections.abc import Iterator

import anthropic
import httpx
import pytest
from agentmesh_shared.llm.scripted_server import LABEL, ScriptedServer


@pytest.fixture(scope="module")
def url() -> Iterator[str]:
    server = ScriptedServer(("127.0.0.1", 0))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_the_sdk_parses_replies_with_usage_and_label(url: str) -> None:
    client = anthropic.Anthropic(api_key="k", base_url=url, max_retries=0)
    reply = client.messages.create(
        model="claude-x", max_tokens=100, messages=[{"role": "user", "content": "hello"}]
    )
    assert reply.model == "claude-x"
    assert reply.stop_reason == "end_turn"
    assert reply.content[0].type == "text" and reply.content[0].text.startswith(LABEL)
    assert reply.usage.input_tokens > 0 and reply.usage.output_tokens > 0


def test_wire_errors_look_like_the_vendors(url: str) -> None:
    no_key = httpx.post(f"{url}/v1/messages", json={"messages": []})
    assert no_key.status_code == 401 and no_key.json()["error"]["type"] == "authentication_error"
    bad = httpx.post(f"{url}/v1/messages", content=b"{nope", headers={"x-api-key": "k"})
    assert bad.status_code == 400 and bad.json()["type"] == "error"
    client = anthropic.Anthropic(api_key="k", base_url=url, max_retries=0)
    with pytest.raises(anthropic.BadRequestError):
        client.post("/v1/messages", cast_to=dict, body={"model": "m"})
