"""The agent loop against a real HTTP Messages-API server (the scripted one) via the SDK."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import anthropic
import pytest
from agentmesh_shared.agent import AgentLoop, LoopLimitError, LoopState, Tool, ToolContext
from agentmesh_shared.llm.scripted_server import ScriptedServer
from pydantic import BaseModel


@pytest.fixture(scope="module")
def llm() -> Iterator[anthropic.Anthropic]:
    server = ScriptedServer(("127.0.0.1", 0))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    client = anthropic.Anthropic(
        api_key="k", base_url=f"http://127.0.0.1:{server.server_address[1]}", max_retries=0
    )
    yield client
    server.shutdown()
    server.server_close()


class DelegateArgs(BaseModel):
    role: str
    instruction: str


def _loop(llm: anthropic.Anthropic, tools: list[Tool[Any]], **kw: Any) -> AgentLoop:
    defaults: dict[str, Any] = {
        "client": llm,
        "model": "m",
        "system": "s",
        "tools": tools,
        "task_id": "t1",
        "max_steps": 5,
        "deadline": time.time() + 30,
    }
    defaults.update(kw)
    return AgentLoop(**defaults)


def test_parallel_tool_calls_of_one_turn_run_concurrently(llm: anthropic.Anthropic) -> None:
    barrier = threading.Barrier(2, timeout=10)  # both calls must be in flight at once
    seen: list[str] = []

    def delegate(args: DelegateArgs, ctx: ToolContext) -> str:
        barrier.wait()
        seen.append(args.role)
        return f"{args.role} done"

    steps: list[Any] = []
    outcome = _loop(llm, [Tool("delegate", "d", DelegateArgs, delegate)], on_step=steps.append).run(
        prompt="plan this"
    )
    assert sorted(seen) == ["coder", "researcher"]
    assert outcome.text.startswith("[scripted model] Synthesis")
    assert "researcher done" in outcome.text and "coder done" in outcome.text
    assert outcome.state.steps == 2
    assert [s.tool_calls for s in steps] == [("delegate", "delegate"), ()]
    assert all(s.usage.input_tokens > 0 for s in steps)
    assert outcome.state.usage.total == sum(s.usage.total for s in steps)


def test_invalid_tool_input_goes_back_to_the_model_as_an_error(llm: anthropic.Anthropic) -> None:
    class Strict(BaseModel):
        role: int  # the script sends a string: validation fails

    outcome = _loop(llm, [Tool("delegate", "d", Strict, lambda a, c: "x")]).run(prompt="p")
    results = [
        b
        for m in outcome.state.messages
        if m["role"] == "user" and isinstance(m["content"], list)
        for b in m["content"]
    ]
    assert all(b["is_error"] for b in results)
    assert "invalid input for delegate" in results[0]["content"]


def test_max_steps_and_deadline_are_enforced(llm: anthropic.Anthropic) -> None:
    tool = Tool("delegate", "d", DelegateArgs, lambda a, c: "ok")
    with pytest.raises(LoopLimitError) as steps:
        _loop(llm, [tool], max_steps=1).run(prompt="p")
    assert steps.value.limit == "max_steps"
    with pytest.raises(LoopLimitError) as late:
        _loop(llm, [tool], deadline=time.time() - 1).run(prompt="p")
    assert late.value.limit == "timeout"


def test_a_loop_resumes_from_a_checkpoint_without_repeating_model_calls(
    llm: anthropic.Anthropic,
) -> None:
    checkpoints: list[dict[str, Any]] = []
    calls: list[str] = []

    def delegate(args: DelegateArgs, ctx: ToolContext) -> str:
        calls.append(ctx.tool_use_id)
        return "ok"

    tool = Tool("delegate", "d", DelegateArgs, delegate)
    _loop(llm, [tool], on_checkpoint=lambda s: checkpoints.append(s.to_dict())).run(prompt="p")
    after_plan = LoopState.from_dict(checkpoints[0])  # the model asked for tools; none ran yet
    assert len(after_plan.pending_tool_uses()) == 2
    resumed = _loop(llm, [tool]).run(state=after_plan)
    assert resumed.state.steps == 2  # one call before the "crash", one after
    assert sorted(calls[2:]) == sorted(calls[:2])  # the same tool_use ids ran again
