"""Spans exported by the real SDK over OTLP reach the collector's traces file, readable.

The collector is the offline stand-in the mesh runs without a registry (rotel with
the traces-file processor of docker/otel-collector/), as a local process; the spans
come from the OpenTelemetry SDK's own OTLP exporters, gRPC and HTTP, as the
services send them.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from pathlib import Path

import httpx
import pytest
from agentmesh_orchestrator.trace_api import register_trace_routes
from agentmesh_orchestrator.traces import Span, TraceReader
from agentmesh_shared.models import Role, SubtaskRecord, TaskLimits, TaskRecord
from fastapi import FastAPI
from fastapi.testclient import TestClient
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import BatchSpanProcessor

from tests.support.collector import Collector, CollectorMissingError, start_collector
from tests.support.otlp_json import MeshTrace, Service, mesh_trace

KINDS = {0: "internal", 1: "server", 2: "client", 3: "producer", 4: "consumer"}  # SDK SpanKind


StartCollector = Callable[..., Collector]


@pytest.fixture
def start(tmp_path: Path) -> Iterator[StartCollector]:
    """Starts the collector (stopped after the test); fails, saying why, if it is not installed."""
    with ExitStack() as stack:

        def started(**env: str) -> Collector:
            try:
                return stack.enter_context(start_collector(tmp_path / "collector", env=env))
            except CollectorMissingError as err:
                pytest.fail(f"the collector is not installed (make bootstrap installs it): {err}")

        yield started


@pytest.fixture
def collector(start: StartCollector) -> Collector:
    return start()


def _read_until(
    reader: TraceReader, trace_id: str, count: int, timeout: float = 20.0
) -> list[Span]:
    deadline = time.monotonic() + timeout
    spans: list[Span] = []
    while time.monotonic() < deadline:
        if reader.path.exists():
            spans = reader.spans(trace_id)
            if len(spans) >= count:
                return spans
        time.sleep(0.1)
    raise AssertionError(f"only {len(spans)} of {count} spans reached {reader.path} in {timeout} s")


def _send_over_http(collector: Collector, spans: tuple[ReadableSpan, ...]) -> None:
    """OTLP/HTTP with a protobuf body, as the SDK's HTTP exporter sends it."""
    response = httpx.post(
        f"{collector.http_endpoint}/v1/traces",
        content=encode_spans(spans).SerializeToString(),
        headers={"Content-Type": "application/x-protobuf"},
        timeout=10,
        trust_env=False,
    )
    response.raise_for_status()


def _export_mesh_trace(collector: Collector) -> MeshTrace:
    """orchestrator and researcher export over gRPC (batching, as in the mesh); coder over HTTP."""
    services = {
        name: Service(name, f"{name}-replica-1") for name in ("orchestrator", "researcher", "coder")
    }
    processors = []
    for name in ("orchestrator", "researcher"):
        processor = BatchSpanProcessor(
            OTLPSpanExporter(endpoint=collector.grpc_endpoint, insecure=True),
            schedule_delay_millis=200,
        )
        services[name].provider.add_span_processor(processor)
        processors.append(processor)
    mesh = mesh_trace(**services)
    for name in ("orchestrator", "researcher"):
        services[name].provider.shutdown()  # flushes the batch over gRPC
    _send_over_http(collector, mesh.spans("coder"))
    return mesh


def test_sdk_spans_sent_over_otlp_are_read_back_from_the_traces_file(collector: Collector) -> None:
    mesh = _export_mesh_trace(collector)
    reader = TraceReader(collector.traces_file)

    spans = _read_until(reader, mesh.trace_id, count=11)

    assert len(spans) == 11
    assert {span.service for span in spans} == {"orchestrator", "researcher", "coder"}
    read = {span.span_id: span for span in spans}
    for sent in mesh.all_spans():
        context = sent.get_span_context()
        assert context is not None
        got = read[format(context.span_id, "016x")]
        parent = format(sent.parent.span_id, "016x") if sent.parent else None
        assert (got.name, got.parent_span_id, got.trace_id) == (sent.name, parent, mesh.trace_id)
        assert got.kind == KINDS[sent.kind.value]
        assert got.service == sent.resource.attributes["service.name"]
        assert got.instance == sent.resource.attributes["service.instance.id"]
        assert got.start_unix_nano == sent.start_time
        assert got.end_unix_nano == sent.end_time
        assert got.attributes == {
            key: list(value) if isinstance(value, tuple) else value
            for key, value in (sent.attributes or {}).items()
        }
        assert got.status == sent.status.status_code.name.lower()
    by_name = {span.name: span for span in spans}
    assert by_name["run coder"].parent_span_id == mesh.span_ids["delegate coder"]
    assert by_name["tool run_python"].status_message == "exit status 1"
    assert by_name["chat researcher"].attributes["gen_ai.usage.input_tokens"] == 1000


def test_the_trace_route_reads_what_the_collector_wrote(collector: Collector) -> None:
    mesh = _export_mesh_trace(collector)
    record = TaskRecord(
        id="task-1",
        text="t",
        limits=TaskLimits(max_steps=3, token_budget=1000, timeout_s=60),
        trace_id=mesh.trace_id,
        subtasks=[
            SubtaskRecord(id="a", role=Role.RESEARCHER, instruction="x"),
            SubtaskRecord(id="b", role=Role.CODER, instruction="y"),
        ],
    )
    app = FastAPI()
    register_trace_routes(app, lambda: TraceReader(collector.traces_file), {"task-1": record}.get)

    body = TestClient(app).get("/tasks/task-1/trace", params={"wait": 20}).json()

    assert body["complete"] is True
    assert body["services"] == ["coder", "orchestrator", "researcher"]
    assert {span["span_id"] for span in body["spans"]} == set(mesh.span_ids.values())


def test_files_rotated_by_the_collector_are_read_too(start: StartCollector) -> None:
    """The stand-in moves a full file to traces.jsonl.1; the trace spans both files."""
    collector = start(AGENTMESH_TRACES_FILE_MAX_MB="0.000001")  # every batch rotates
    mesh = mesh_trace()
    reader = TraceReader(collector.traces_file)

    _send_over_http(collector, mesh.spans("orchestrator"))
    _read_until(reader, mesh.trace_id, count=6)
    _send_over_http(collector, mesh.spans("coder"))
    spans = _read_until(reader, mesh.trace_id, count=9)

    assert reader.files() == [
        collector.traces_file.with_name("traces.jsonl.1"),
        collector.traces_file,
    ]
    assert {span.service for span in spans} == {"orchestrator", "coder"}
