"""The trace reader, the trace route and the span tree, on OTLP/JSON made by the real SDK."""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import uvicorn
from agentmesh_orchestrator import traces
from agentmesh_orchestrator.cli import main
from agentmesh_orchestrator.trace_api import register_trace_routes
from agentmesh_orchestrator.trace_cli import render_trace, total_tokens, trace_json, tree
from agentmesh_orchestrator.traces import TraceReader, TracesUnavailableError
from agentmesh_shared.models import Role, SubtaskRecord, TaskLimits, TaskRecord, TaskStatus
from click.testing import CliRunner
from fastapi import FastAPI
from fastapi.testclient import TestClient

from tests.support.chroma_server import free_port
from tests.support.otlp_json import Dialect, MeshTrace, json_line, mesh_trace


def write_trace(path: Path, mesh: MeshTrace, dialect: Dialect = "collector") -> None:
    """One line per service, as each process's exporter sends its own batch."""
    with path.open("a") as out:
        for service in ("orchestrator", "researcher", "coder"):
            out.write(json_line(mesh.spans(service), dialect))


@pytest.fixture
def mesh() -> MeshTrace:
    return mesh_trace()


@pytest.fixture
def traces_file(tmp_path: Path) -> Path:
    return tmp_path / "traces.jsonl"


@pytest.mark.parametrize("dialect", ["collector", "protobuf"])
def test_reads_every_span_of_the_trace_with_its_links(
    traces_file: Path, mesh: MeshTrace, dialect: Dialect
) -> None:
    other = mesh_trace()  # a second task's trace in the same batches
    write_trace(traces_file, other, dialect)
    write_trace(traces_file, mesh, dialect)

    found = TraceReader(traces_file).read(mesh.trace_id)

    assert found.trace_id == mesh.trace_id
    assert len(found.spans) == len(mesh.all_spans()) == 11
    assert found.services == {"orchestrator", "researcher", "coder"}
    assert found.skipped_lines == 0
    by_name = {span.name: span for span in found.spans}
    ids = mesh.span_ids
    assert {span.span_id for span in found.spans} == set(ids.values())
    assert by_name["task.submit"].parent_span_id is None
    assert by_name["planner.run"].parent_span_id == ids["task.submit"]
    # across the broker: the worker's consumer span is a child of the producer span
    assert by_name["run researcher"].parent_span_id == ids["delegate researcher"]
    assert by_name["run coder"].parent_span_id == ids["delegate coder"]
    assert by_name["chat coder"].parent_span_id == ids["run coder"]
    assert all(span.trace_id == mesh.trace_id for span in found.spans)


def test_span_fields_resource_kind_status_attributes_events(
    traces_file: Path, mesh: MeshTrace
) -> None:
    write_trace(traces_file, mesh)
    by_name = {span.name: span for span in TraceReader(traces_file).spans(mesh.trace_id)}

    submit = by_name["task.submit"]
    assert (submit.service, submit.instance, submit.kind) == (
        "orchestrator",
        "orchestrator-7d9f",
        "server",
    )
    assert submit.scope == "tests.support.otlp_json"
    assert submit.status == "unset"
    assert submit.duration_ms >= 0
    assert submit.end_time >= submit.start_time

    consume = by_name["run researcher"]
    assert (consume.service, consume.instance, consume.kind) == (
        "researcher",
        "researcher-1",
        "consumer",
    )
    assert consume.attributes["agentmesh.subtask_id"] == "sub-researcher"
    assert consume.attributes["agentmesh.retry"] is False
    assert consume.attributes["agentmesh.scores"] == [0.5, 1.25]
    assert by_name["delegate coder"].kind == "producer"

    chat = by_name["chat claude-sonnet-4-5"]
    assert chat.kind == "client"
    assert chat.attributes["gen_ai.usage.input_tokens"] == 812
    assert isinstance(chat.attributes["gen_ai.usage.input_tokens"], int)
    assert chat.attributes["gen_ai.response.finish_reasons"] == ["tool_use"]

    tool = by_name["tool run_python"]
    assert (tool.status, tool.status_message) == ("error", "exit status 1")
    assert [event.name for event in tool.events] == ["exception"]
    assert tool.events[0].attributes["exception.type"] == "RuntimeError"


def test_both_dialects_give_the_same_spans(tmp_path: Path, mesh: MeshTrace) -> None:
    write_trace(tmp_path / "a.jsonl", mesh, "collector")
    write_trace(tmp_path / "b.jsonl", mesh, "protobuf")
    collector = TraceReader(tmp_path / "a.jsonl").spans(mesh.trace_id)
    protobuf = TraceReader(tmp_path / "b.jsonl").spans(mesh.trace_id)
    assert [s.model_dump() for s in collector] == [s.model_dump() for s in protobuf]


def test_corrupt_partial_and_foreign_lines_are_skipped(traces_file: Path, mesh: MeshTrace) -> None:
    good = json_line(mesh.spans("orchestrator"))
    with traces_file.open("w") as out:
        out.write("not json at all " + mesh.trace_id + "\n")
        out.write(good[: len(good) // 2] + "\n")  # cut off mid-line, then a newline
        out.write(json.dumps([mesh.trace_id]) + "\n")  # JSON, but not a request
        out.write(json.dumps({"resourceSpans": [mesh.trace_id]}) + "\n")  # wrong shape
        out.write("\n\n")
        out.write(good)
        out.write(json_line(mesh.spans("researcher")))
        # the collector writes the line, then its newline: the last line is being written
        out.write(json_line(mesh.spans("coder"))[:-200])

    found = TraceReader(traces_file).read(mesh.trace_id)

    assert found.services == {"orchestrator", "researcher"}
    assert found.skipped_lines == 5
    # the coder's line completes (no newline yet): it counts
    with traces_file.open("a") as out:
        out.write(json_line(mesh.spans("coder"))[-200:-1])
    assert TraceReader(traces_file).read(mesh.trace_id).services == {
        "orchestrator",
        "researcher",
        "coder",
    }


def test_rotated_files_of_both_collectors_are_read_oldest_first(
    traces_file: Path, mesh: MeshTrace
) -> None:
    directory = traces_file.parent
    contrib_backup = directory / "traces-2026-11-22T10-00-00.000.jsonl"  # contrib (timberjack)
    standin_backup = directory / "traces.jsonl.1"  # the offline stand-in
    contrib_backup.write_text(json_line(mesh.spans("orchestrator")))
    standin_backup.write_text(json_line(mesh.spans("researcher")))
    traces_file.write_text(json_line(mesh.spans("coder")))
    (directory / "traces-2026-11-21T10-00-00.000.jsonl.gz").write_bytes(b"\x1f\x8b not read")
    (directory / "unrelated.jsonl").write_text(json_line(mesh.spans("coder")))
    now = time.time()
    for age, path in ((300, contrib_backup), (200, standin_backup), (0, traces_file)):
        mtime = now - age
        os.utime(path, (mtime, mtime))

    reader = TraceReader(traces_file)
    assert reader.files() == [contrib_backup, standin_backup, traces_file]
    found = reader.read(mesh.trace_id)
    assert found.services == {"orchestrator", "researcher", "coder"}
    assert len(found.spans) == 11


def test_a_span_written_twice_is_kept_once(traces_file: Path, mesh: MeshTrace) -> None:
    write_trace(traces_file, mesh)
    write_trace(traces_file.with_name("traces.jsonl.1"), mesh)  # a retried export
    assert len(TraceReader(traces_file).spans(mesh.trace_id)) == 11


def test_lines_across_read_blocks(
    traces_file: Path, mesh: MeshTrace, monkeypatch: pytest.MonkeyPatch
) -> None:
    filler = json_line(mesh_trace().all_spans())
    traces_file.write_text(filler * 5)
    write_trace(traces_file, mesh)
    with traces_file.open("a") as out:
        out.write(filler)
    for block in (7, 64, 1000, len(filler) - 1, len(filler) + 1):
        monkeypatch.setattr(traces, "_READ_BLOCK", block)
        assert len(TraceReader(traces_file).spans(mesh.trace_id)) == 11, block


def test_a_100_mb_file_is_searched_quickly(traces_file: Path, mesh: MeshTrace) -> None:
    filler = json_line(mesh_trace().all_spans()).encode()
    copies = 100 * 1024 * 1024 // len(filler) + 1
    with traces_file.open("wb") as out:
        for _ in range(copies // 2):
            out.write(filler)
        out.write(json_line(mesh.spans("orchestrator")).encode())
        for _ in range(copies - copies // 2):
            out.write(filler)
    assert traces_file.stat().st_size > 100 * 1024 * 1024

    started = time.perf_counter()
    found = TraceReader(traces_file).read(mesh.trace_id)
    elapsed = time.perf_counter() - started

    assert found.services == {"orchestrator"}
    assert elapsed < 3.0, f"reading 100 MB took {elapsed:.2f} s"


def test_missing_file_and_bad_trace_id(traces_file: Path) -> None:
    reader = TraceReader(traces_file)
    with pytest.raises(TracesUnavailableError) as missing:
        reader.read("4bf92f3577b34da6a3ce929d0e0e4736")
    assert str(traces_file) in str(missing.value)
    traces_file.write_text("")
    assert reader.read("4BF92F3577B34DA6A3CE929D0E0E4736").spans == []
    for bad in ("", "xyz", "0" * 32, "4bf92f3577b34da6a3ce929d0e0e473"):
        with pytest.raises(ValueError, match="trace id"):
            reader.read(bad)


# --- the span tree ---------------------------------------------------------------------


def test_tree_indents_children_under_parents_in_start_order(
    traces_file: Path, mesh: MeshTrace
) -> None:
    write_trace(traces_file, mesh)
    spans = TraceReader(traces_file).spans(mesh.trace_id)

    rows = [(prefix, span.name) for prefix, span in tree(spans)]

    assert rows == [
        ("", "task.submit"),
        ("└─ ", "planner.run"),
        ("   └─ ", "invoke_agent planner"),
        ("      ├─ ", "chat claude-sonnet-4-5"),
        ("      ├─ ", "delegate researcher"),
        ("      │  └─ ", "run researcher"),
        ("      │     └─ ", "chat researcher"),
        ("      └─ ", "delegate coder"),
        ("         └─ ", "run coder"),
        ("            ├─ ", "chat coder"),
        ("            └─ ", "tool run_python"),
    ]


def test_a_span_whose_parent_is_missing_becomes_a_root(traces_file: Path, mesh: MeshTrace) -> None:
    traces_file.write_text(json_line(mesh.spans("researcher")))
    spans = TraceReader(traces_file).spans(mesh.trace_id)
    assert [(p, s.name) for p, s in tree(spans)] == [
        ("", "run researcher"),
        ("└─ ", "chat researcher"),
    ]


def test_rendered_tree_and_json(traces_file: Path, mesh: MeshTrace) -> None:
    write_trace(traces_file, mesh)
    spans = TraceReader(traces_file).spans(mesh.trace_id)

    # the loop span's sum is not counted again on top of its model calls
    assert total_tokens(spans) == (812 + 1000 + 2000, 95 + 100 + 200)
    text = render_trace(mesh.trace_id, spans)
    lines = text.splitlines()
    assert lines[0].startswith(f"trace {mesh.trace_id}  11 spans  3 services")
    assert "tokens 3812 in / 395 out" in lines[0]
    assert "1 error" in lines[0]
    chat = next(line for line in lines if "chat claude-sonnet-4-5" in line)
    assert "orchestrator" in chat
    assert "orchestrator-7d9f" in chat
    assert "812 in / 95 out" in chat
    tool = next(line for line in lines if "tool run_python" in line)
    assert "coder-2" in tool
    assert "error" in tool
    assert "exit status 1" in tool

    as_json = json.loads(json.dumps(trace_json(mesh.trace_id, spans)))
    assert as_json["trace_id"] == mesh.trace_id
    first = as_json["spans"][0]
    assert {
        "span_id",
        "parent_span_id",
        "service",
        "instance",
        "name",
        "duration_ms",
        "status",
        "attributes",
    } <= set(first)
    assert {span["service"] for span in as_json["spans"]} == {"orchestrator", "researcher", "coder"}
    assert render_trace(mesh.trace_id, []).endswith(
        "no spans yet (exporters batch for a few seconds; try again)"
    )


# --- the API route ---------------------------------------------------------------------


def _record(trace_id: str | None, *roles: Role) -> TaskRecord:
    return TaskRecord(
        id="task-1",
        text="t",
        limits=TaskLimits(max_steps=3, token_budget=1000, timeout_s=60),
        trace_id=trace_id,
        subtasks=[
            SubtaskRecord(id=f"sub-{i}", role=role, instruction="x") for i, role in enumerate(roles)
        ],
    )


def _client(traces_file: Path, records: dict[str, TaskRecord]) -> TestClient:
    app = FastAPI()
    register_trace_routes(app, lambda: TraceReader(traces_file), records.get)
    return TestClient(app)


def test_route_returns_the_tasks_spans(traces_file: Path, mesh: MeshTrace) -> None:
    write_trace(traces_file, mesh)
    client = _client(traces_file, {"task-1": _record(mesh.trace_id, Role.RESEARCHER, Role.CODER)})

    response = client.get("/tasks/task-1/trace")

    assert response.status_code == 200
    body = response.json()
    assert body["trace_id"] == mesh.trace_id
    assert body["complete"] is True
    assert body["services"] == ["coder", "orchestrator", "researcher"]
    assert len(body["spans"]) == 11
    assert {
        "span_id",
        "parent_span_id",
        "service",
        "instance",
        "name",
        "duration_ms",
        "status",
    } <= set(body["spans"][0])


def test_route_errors(traces_file: Path, mesh: MeshTrace) -> None:
    client = _client(traces_file, {"task-1": _record(mesh.trace_id), "untraced": _record(None)})
    unknown = client.get("/tasks/nope/trace")
    assert unknown.status_code == 404
    assert "nope" in unknown.json()["detail"]
    missing = client.get("/tasks/task-1/trace")
    assert missing.status_code == 503
    assert str(traces_file) in missing.json()["detail"]
    assert client.get("/tasks/untraced/trace").status_code == 409
    assert client.get("/tasks/task-1/trace", params={"wait": 31}).status_code == 422


def test_route_waits_for_every_service_of_the_task(traces_file: Path, mesh: MeshTrace) -> None:
    client = _client(traces_file, {"task-1": _record(mesh.trace_id, Role.RESEARCHER, Role.CODER)})
    traces_file.write_text(json_line(mesh.spans("orchestrator")))

    def collector_flushes_later() -> None:
        time.sleep(1.0)
        with traces_file.open("a") as out:
            out.write(json_line(mesh.spans("researcher")))
            out.write(json_line(mesh.spans("coder")))

    writer = threading.Thread(target=collector_flushes_later)
    writer.start()
    try:
        early = client.get("/tasks/task-1/trace").json()
        assert early["complete"] is False
        assert early["services"] == ["orchestrator"]
        waited = client.get("/tasks/task-1/trace", params={"wait": 15}).json()
    finally:
        writer.join()
    assert waited["complete"] is True
    assert waited["services"] == ["coder", "orchestrator", "researcher"]


# --- the CLI, against the route served over real HTTP ------------------------------------


@pytest.fixture
def served(traces_file: Path, mesh: MeshTrace) -> Iterator[str]:
    app = FastAPI()
    records = {"task-1": _record(mesh.trace_id, Role.RESEARCHER, Role.CODER)}
    register_trace_routes(app, lambda: TraceReader(traces_file), records.get)
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_config=None))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert time.monotonic() < deadline, "the test API did not start"
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)


def test_cli_trace_prints_the_tree_and_json(
    served: str, traces_file: Path, mesh: MeshTrace
) -> None:
    runner = CliRunner()
    missing = runner.invoke(main, ["--api", served, "trace", "task-1", "--wait", "0"])
    assert missing.exit_code == 5
    assert str(traces_file) in missing.output
    assert runner.invoke(main, ["--api", served, "trace", "nope"]).exit_code == 4

    write_trace(traces_file, mesh)
    human = runner.invoke(main, ["--api", served, "trace", "task-1"])
    assert human.exit_code == 0, human.output
    assert human.output.startswith(f"trace {mesh.trace_id}  11 spans")
    assert "      │  └─ run researcher" in human.output
    assert "\x1b[" not in human.output  # no colour codes when not on a terminal

    as_json = runner.invoke(main, ["--api", served, "trace", "task-1", "--json"])
    assert as_json.exit_code == 0, as_json.output
    printed = json.loads(as_json.output)
    assert printed["trace_id"] == mesh.trace_id
    assert len(printed["spans"]) == 11
    coder = next(span for span in printed["spans"] if span["name"] == "tool run_python")
    assert coder["service"] == "coder"
    assert coder["instance"] == "coder-2"
    assert coder["status"] == "error"
    assert coder["parent_span_id"] == mesh.span_ids["run coder"]


def test_an_ended_tasks_trace_is_complete_only_with_every_parent(
    traces_file: Path, mesh: MeshTrace
) -> None:
    record = _record(mesh.trace_id, Role.RESEARCHER, Role.CODER)
    record.status = TaskStatus.SUCCEEDED
    client = _client(traces_file, {"task-1": record})
    # the orchestrator's long planner span is still in an exporter's batch
    without_planner = [s for s in mesh.spans("orchestrator") if s.name != "planner.run"]
    with traces_file.open("w") as out:
        out.write(json_line(without_planner))
        out.write(json_line(mesh.spans("researcher")))
        out.write(json_line(mesh.spans("coder")))

    partial = client.get("/tasks/task-1/trace").json()
    assert (partial["complete"], partial["missing_parents"]) == (False, 1)

    with traces_file.open("a") as out:
        out.write(json_line([s for s in mesh.spans("orchestrator") if s.name == "planner.run"]))
    whole = client.get("/tasks/task-1/trace").json()
    assert (whole["complete"], whole["missing_parents"]) == (True, 0)


def test_an_ended_tasks_trace_waits_for_every_model_calls_span(
    traces_file: Path, mesh: MeshTrace
) -> None:
    record = _record(mesh.trace_id, Role.RESEARCHER, Role.CODER)
    record.status = TaskStatus.SUCCEEDED
    record.usage.input_tokens = 812 + 1000 + 2000
    client = _client(traces_file, {"task-1": record})
    # the coder's model call is a leaf: the tree looks whole without it
    with traces_file.open("w") as out:
        out.write(json_line(mesh.spans("orchestrator")))
        out.write(json_line(mesh.spans("researcher")))
        out.write(json_line([s for s in mesh.spans("coder") if s.name != "chat coder"]))

    partial = client.get("/tasks/task-1/trace").json()
    assert (partial["complete"], partial["missing_parents"]) == (False, 0)

    with traces_file.open("a") as out:
        out.write(json_line([s for s in mesh.spans("coder") if s.name == "chat coder"]))
    assert client.get("/tasks/task-1/trace").json()["complete"] is True


def test_a_read_during_a_rotation_finds_the_files(tmp_path: Path) -> None:
    """The collector renames a full file to .1 and then creates it anew: a listing
    under way meanwhile can miss the file under both names, and the reader looks
    again (this fails with the retries taken out)."""
    current = tmp_path / "traces.jsonl"
    current.write_text("{}\n")
    reader = TraceReader(current)
    stop = threading.Event()

    def rotate() -> None:
        while not stop.is_set():
            current.replace(current.with_name("traces.jsonl.1"))
            time.sleep(0.001)
            current.write_text("{}\n")
            current.with_name("traces.jsonl.1").unlink()

    rotator = threading.Thread(target=rotate)
    rotator.start()
    try:
        for _ in range(300):
            reader.read("0" * 31 + "1")
    finally:
        stop.set()
        rotator.join()
