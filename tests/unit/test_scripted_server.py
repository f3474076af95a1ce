from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

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


def test_a_fenced_python_block_goes_whole_to_the_coder_and_is_run_as_written(url: str) -> None:
    code = "import os\n\nprint('  indented?', os.getpid())\n"
    task = f"Run this, please:\n```python\n{code}```\nand tell me what it printed."
    client = anthropic.Anthropic(api_key="k", base_url=url, max_retries=0)
    delegate = {"name": "delegate", "input_schema": {"type": "object"}}
    plan = client.messages.create(
        model="m",
        max_tokens=100,
        tools=[delegate],  # type: ignore[list-item]
        messages=[{"role": "user", "content": task}],
    )
    instructions = [b.input["instruction"] for b in plan.content if b.type == "tool_use"]
    coder_instruction = instructions[1]
    assert f"```python\n{code}```" in coder_instruction
    run_python = {"name": "run_python", "input_schema": {"type": "object"}}
    history: list[anthropic.types.MessageParam] = [
        {"role": "user", "content": coder_instruction},
        {"role": "assistant", "content": [{"type": "text", "text": "searching"}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t1", "content": "-"}]},
    ]
    step = client.messages.create(
        model="m",
        max_tokens=100,
        tools=[run_python],  # type: ignore[list-item]
        messages=history,
    )
    write = next(b for b in step.content if b.type == "tool_use")
    assert write.name == "write_file" and write.input == {"path": "main.py", "content": code}


def test_streamed_replies_match_the_plain_ones(url: str) -> None:
    client = anthropic.Anthropic(api_key="k", base_url=url, max_retries=0)
    tools: Any = [
        {"name": n, "description": n, "input_schema": {"type": "object"}}
        for n in ("memory_search", "memory_store", "fetch_url")
    ]
    messages: Any = [{"role": "user", "content": "Read https://allowed.example.test/a b"}]
    plain = client.messages.create(model="m", max_tokens=64, messages=messages, tools=tools)
    with client.messages.stream(model="m", max_tokens=64, messages=messages, tools=tools) as stream:
        kinds = {event.type for event in stream}
        streamed = stream.get_final_message()
    assert {"message_start", "content_block_delta", "message_delta", "message_stop"} <= kinds
    # The scripted researcher fetches the URL its instruction holds, first.
    for reply in (plain, streamed):
        block = reply.content[0]
        assert block.type == "tool_use" and block.name == "fetch_url"
        assert block.input == {"url": "https://allowed.example.test/a"}
    assert streamed.usage.output_tokens == plain.usage.output_tokens


def test_the_arrivals_log_has_a_line_per_call_stamped_when_it_arrived(tmp_path: Path) -> None:
    log = tmp_path / "arrivals.jsonl"
    with log.open("a", encoding="utf-8") as sink:
        server = ScriptedServer(("127.0.0.1", 0), delay_ms=300, arrivals=sink)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        url = f"http://127.0.0.1:{server.server_address[1]}"
        try:
            client = anthropic.Anthropic(api_key="k", base_url=url, max_retries=0)
            delegate = {"name": "delegate", "input_schema": {"type": "object"}}
            run_python = {"name": "run_python", "input_schema": {"type": "object"}}
            sent = time.time()
            client.messages.create(
                model="m",
                max_tokens=100,
                tools=[delegate],  # type: ignore[list-item]
                messages=[{"role": "user", "content": "plan timeline 0 7"}],
            )
            answered = time.time()
            client.messages.create(
                model="m",
                max_tokens=100,
                tools=[run_python],  # type: ignore[list-item]
                messages=[
                    {"role": "user", "content": "Write and run a program for: timeline 0 7"},
                    {
                        "role": "assistant",
                        "content": [
                            {"type": "tool_use", "id": "t1", "name": "run_python", "input": {}}
                        ],
                    },
                    {
                        "role": "user",
                        "content": [{"type": "tool_result", "tool_use_id": "t1", "content": "ok"}],
                    },
                ],
            )
            bad = httpx.post(f"{url}/v1/messages", content=b"{nope", headers={"x-api-key": "k"})
            assert bad.status_code == 400
        finally:
            server.shutdown()
            server.server_close()
    lines = [json.loads(line) for line in log.read_text().splitlines()]
    assert [(x["script"], x["results"], x["subject"]) for x in lines] == [
        ("orchestrator", 0, "plan timeline 0 7"),
        ("coder", 1, "Write and run a program for: timeline 0 7"),
    ]  # the unparseable request is not a call
    # Stamped on arrival, before the model's 0.3 s: not when the reply went out.
    assert sent <= lines[0]["at"] <= answered - 0.25
