"""One trace per task across processes, read back from a real collector."""

from __future__ import annotations

import contextlib
import json
from typing import Any

from tests.support.mesh import LocalMesh, NotReadyError, wait_until


def _trace_with_every_chat(mesh: LocalMesh, task: dict[str, Any]) -> dict[str, Any]:
    """The task's trace once every model call's span has arrived.

    Each process exports its spans in batches, so a trace that already forms one tree
    can still lack the last chat span of a busy replica for a few seconds: wait until
    the chat spans account for every input token the task recorded.
    """
    seen: dict[str, Any] = {}

    def complete() -> bool:
        out = mesh.cli("trace", task["id"], "--json", "--wait", "30")
        assert out.returncode == 0, out.stderr
        seen["trace"] = json.loads(out.stdout)
        chats = [s for s in seen["trace"]["spans"] if s["name"].startswith("chat ")]
        tokens = sum(c["attributes"].get("gen_ai.usage.input_tokens", 0) for c in chats)
        return bool(tokens == task["usage"]["input_tokens"])

    # On a timeout the assertions below say what is missing.
    with contextlib.suppress(NotReadyError):
        wait_until(complete, "every chat span in the trace", timeout=60)
    trace: dict[str, Any] = seen["trace"]
    return trace


def _by_id(spans: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {s["span_id"]: s for s in spans}


def _ancestors(span: dict[str, Any], index: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    chain = []
    while span.get("parent_span_id") and span["parent_span_id"] in index:
        span = index[span["parent_span_id"]]
        chain.append(span)
    return chain


def test_one_trace_spans_cli_api_planner_broker_workers_llm_and_memory(mesh: LocalMesh) -> None:
    done = mesh.cli("submit", "Trace this task end to end", "--wait", "--json")
    assert done.returncode == 0, done.stderr
    task = json.loads(done.stdout)
    trace = _trace_with_every_chat(mesh, task)
    assert trace["trace_id"] == task["trace_id"]
    spans: list[dict[str, Any]] = trace["spans"]
    index = _by_id(spans)
    services = {s["service"] for s in spans}
    assert {"orchestrator-cli", "orchestrator", "researcher", "coder"} <= services

    # CLI -> API -> planner: one chain of parents.
    submit = next(s for s in spans if s["name"] == "task.submit")
    assert [a["service"] for a in _ancestors(submit, index)] == ["orchestrator", "orchestrator-cli"]
    assert not any(s["name"].startswith("GET /healthz") for s in spans)
    plan = next(s for s in spans if s["name"] == "task.plan")
    assert submit in _ancestors(plan, index)

    # orchestrator -> broker -> worker: each consumer span's parent is the producer span.
    for queue, role in (("research", "researcher"), ("code", "coder")):
        consumers = [s for s in spans if s["name"] == f"process {queue}"]
        assert consumers, f"no {role} consumer span"
        for consumer in consumers:
            assert consumer["service"] == role
            producer = index[consumer["parent_span_id"]]
            assert producer["name"] == f"send {queue}" and producer["service"] == "orchestrator"
            assert plan in _ancestors(producer, index)
            assert consumer["instance"] in {sub["worker"] for sub in task["subtasks"]}

    # Every LLM call is a GenAI span with the real token counts of its response.
    chats = [s for s in spans if s["name"].startswith("chat ")]
    # One GenAI span per model call: nothing else (e.g. the SDK's own spans) repeats them.
    assert chats == [s for s in spans if s["attributes"].get("gen_ai.operation.name") == "chat"]
    assert {s["service"] for s in chats} == {"orchestrator", "researcher", "coder"}
    for chat in chats:
        attrs = chat["attributes"]
        assert attrs["gen_ai.operation.name"] == "chat"
        assert attrs["gen_ai.request.model"]
        assert attrs["gen_ai.usage.input_tokens"] > 0 and attrs["gen_ai.usage.output_tokens"] > 0
        assert attrs["gen_ai.response.finish_reasons"]
        assert "gen_ai.input.messages" not in attrs  # content is off unless asked for
    assert (
        sum(c["attributes"]["gen_ai.usage.input_tokens"] for c in chats)
        == task["usage"]["input_tokens"]
    )
    assert (
        sum(c["attributes"]["gen_ai.usage.output_tokens"] for c in chats)
        == task["usage"]["output_tokens"]
    )

    # Steps, tool calls and memory queries are spans too.
    assert any(s["name"] == "execute_tool run_python" for s in spans)
    queries = [s for s in spans if s["attributes"].get("db.operation.name") == "query"]
    assert queries and all(
        q["attributes"]["db.collection.name"] == "agentmesh-memory" for q in queries
    )
    assert all("db.response.returned_rows" in q["attributes"] for q in queries)
    assert any(s["name"] == "agent.step" for s in spans)


def test_every_log_line_about_a_task_carries_its_trace_id(mesh: LocalMesh) -> None:
    done = mesh.cli("submit", "Log lines with trace ids", "--wait", "--json")
    task = json.loads(done.stdout)
    seen = 0
    for name in ("orchestrator", "researcher-1", "coder-2"):
        for line in mesh.procs[name].log_path.read_text().splitlines():
            if not line.startswith("{") or task["id"] not in line:
                continue
            record = json.loads(line)
            assert record.get("trace_id") == task["trace_id"], record
            seen += 1
    assert seen >= 4  # planner start and end, and each worker's start and end
