"""The task ledger an agent loop keeps around its model calls, on a real redis-server,
with the real SDK against the scripted Messages-API server.

Before a call: the cancel flag and the token budget in one round trip; after it: the
tokens charged, the step's event appended and the cancel flag read again, in one.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anthropic
import pytest
import redis
from agentmesh_shared import events, keys
from agentmesh_shared.agent import (
    AgentLoop,
    CancelledError,
    LoopLimitError,
    StepRecord,
    TaskLedger,
    Tool,
    ToolContext,
)
from agentmesh_shared.budget import TokenBudget
from agentmesh_shared.llm.scripted_server import ScriptedServer
from agentmesh_shared.models import Usage
from pydantic import BaseModel

from tests.support.redis_server import CountedConnection, counted_client, redis_server

TASK = "t-ledger"


@pytest.fixture
def r(tmp_path: Path) -> Iterator[redis.Redis]:
    with redis_server(tmp_path) as client:
        yield client


class DelegateArgs(BaseModel):
    role: str
    instruction: str


def _event(step: StepRecord) -> str:
    return events.encode(TASK, "task.step", f"step {step.step}", tokens=step.usage.total)


def _loop(server: ScriptedServer, ledger: TaskLedger, ran: list[str]) -> AgentLoop:
    def delegate(args: DelegateArgs, ctx: ToolContext) -> str:
        ran.append(args.role)
        return "done"

    client = anthropic.Anthropic(
        api_key="k", base_url=f"http://127.0.0.1:{server.server_address[1]}", max_retries=0
    )
    return AgentLoop(
        client=client,
        model="m",
        system="s",
        tools=[Tool("delegate", "d", DelegateArgs, delegate)],
        task_id=TASK,
        max_steps=5,
        deadline=time.time() + 30,
        ledger=ledger,
    )


def _steps(r: redis.Redis) -> list[dict[str, Any]]:
    return [json.loads(f["event"]) for _, f in r.xrange(keys.task_events(TASK))]


def test_a_call_reads_before_and_writes_after_in_one_round_trip_each(r: redis.Redis) -> None:
    counted = counted_client(r)
    TokenBudget(r).open(TASK, limit=1000, ttl_s=60)
    ledger = TaskLedger(counted, TASK, step_event=_event)
    counted.ping()
    CountedConnection.writes = 0
    assert ledger.before_call() == (False, None)
    assert CountedConnection.writes == 1
    step = StepRecord(
        1, "tool_use", Usage(input_tokens=400, output_tokens=0), ("delegate",), 0.1, "m"
    )
    assert ledger.after_call(step) is False
    assert CountedConnection.writes == 2
    assert r.hget(keys.budget(TASK), "used") == "400"
    assert [e["message"] for e in _steps(r)] == ["step 1"]
    # Spent: the check says so (the loop raises it after its own limits).
    ledger.after_call(
        StepRecord(2, "tool_use", Usage(input_tokens=600, output_tokens=0), (), 0.1, "m")
    )
    cancelled, spent = ledger.before_call()
    assert not cancelled and spent is not None and "1000 of 1000" in str(spent)
    r.set(keys.cancel_flag(TASK), "1")
    assert ledger.before_call()[0] is True
    assert ledger.after_call(step) is True
    # A task without a budget is not limited.
    assert TaskLedger(r, "no-budget").before_call() == (False, None)


def test_a_cancel_during_the_model_call_stops_the_loop_before_its_tools(
    r: redis.Redis, scripted: ScriptedServer
) -> None:
    TokenBudget(r).open(TASK, limit=100_000, ttl_s=60)
    scripted.delay_s = 0.5
    ran: list[str] = []
    loop = _loop(scripted, TaskLedger(r, TASK, step_event=_event), ran)

    def cancel_while_the_call_is_out() -> None:
        while scripted.calls == 0:  # counted on arrival, before the model's delay
            time.sleep(0.005)
        r.set(keys.cancel_flag(TASK), "1")

    threading.Thread(target=cancel_while_the_call_is_out, daemon=True).start()
    with pytest.raises(CancelledError):
        loop.run(prompt="plan this")
    assert ran == []  # the reply asked for two delegations: neither ran
    assert [e["message"] for e in _steps(r)] == ["step 1"]  # the call is on the record
    assert int(r.hget(keys.budget(TASK), "used") or 0) > 0  # and charged


def test_a_spent_budget_ends_the_loop_before_the_next_call(
    r: redis.Redis, scripted: ScriptedServer
) -> None:
    TokenBudget(r).open(TASK, limit=10, ttl_s=60)  # less than the first call costs
    ran: list[str] = []
    loop = _loop(scripted, TaskLedger(r, TASK, step_event=_event), ran)
    with pytest.raises(LoopLimitError, match="token budget exhausted") as caught:
        loop.run(prompt="plan this")
    assert caught.value.limit == "token_budget"
    assert sorted(ran) == ["coder", "researcher"]  # the first call's tools ran
    assert scripted.calls == 1  # the second call never went out
