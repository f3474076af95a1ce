"""OTLP/JSON made by the real OpenTelemetry SDK, in the dialects collectors write.

Spans are recorded by the SDK (``InMemorySpanExporter``), encoded by the OTLP
exporter's own encoder into an ``ExportTraceServiceRequest`` protobuf, and turned
into JSON two ways:

- ``collector``: the contrib collector's ``file`` exporter (pdata's JSON marshaler):
  trace and span ids as hex, enums as integers, int64 as strings.
- ``protobuf``: protobuf's canonical JSON mapping (``MessageToJson``): ids as
  base64, enums by name.

A three-service trace (orchestrator → researcher and coder, propagated through W3C
headers as across Celery) is built by ``mesh_trace``.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from google.protobuf.json_format import MessageToDict
from opentelemetry import propagate, trace
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import Status, StatusCode

Dialect = Literal["collector", "protobuf"]
_ID_KEYS = {"traceId", "spanId", "parentSpanId"}


def _hex_ids(node: Any) -> Any:
    if isinstance(node, dict):
        return {
            key: base64.b64decode(value).hex()
            if key in _ID_KEYS and isinstance(value, str)
            else _hex_ids(value)
            for key, value in node.items()
        }
    if isinstance(node, list):
        return [_hex_ids(item) for item in node]
    return node


def export_request(spans: Sequence[ReadableSpan], dialect: Dialect = "collector") -> dict[str, Any]:
    """One ``ExportTraceServiceRequest`` of ``spans`` as a JSON object."""
    message = encode_spans(spans)
    if dialect == "protobuf":
        encoded: dict[str, Any] = MessageToDict(message)
        return encoded
    hexed: dict[str, Any] = _hex_ids(MessageToDict(message, use_integers_for_enums=True))
    return hexed


def json_line(spans: Sequence[ReadableSpan], dialect: Dialect = "collector") -> str:
    """One line of a traces file, as a collector appends it (with the newline)."""
    return json.dumps(export_request(spans, dialect), separators=(",", ":")) + "\n"


@dataclass
class Service:
    """One process of the mesh: its own provider, resource and in-memory exporter."""

    name: str
    instance: str
    exporter: InMemorySpanExporter = field(default_factory=InMemorySpanExporter)
    provider: TracerProvider = field(init=False)

    def __post_init__(self) -> None:
        self.provider = TracerProvider(
            resource=Resource.create(
                {
                    "service.name": self.name,
                    "service.instance.id": self.instance,
                    "service.namespace": "agentmesh",
                }
            )
        )
        self.provider.add_span_processor(SimpleSpanProcessor(self.exporter))

    @property
    def tracer(self) -> trace.Tracer:
        return self.provider.get_tracer("tests.support.otlp_json")

    def spans(self) -> tuple[ReadableSpan, ...]:
        return self.exporter.get_finished_spans()


@dataclass
class MeshTrace:
    trace_id: str
    services: dict[str, Service]
    span_ids: dict[str, str]  # span name -> span id (hex)

    def spans(self, service: str) -> tuple[ReadableSpan, ...]:
        return self.services[service].spans()

    def all_spans(self) -> list[ReadableSpan]:
        return [span for service in self.services.values() for span in service.spans()]


def _hex_span_id(span: trace.Span) -> str:
    return format(span.get_span_context().span_id, "016x")


def mesh_trace(
    *,
    orchestrator: Service | None = None,
    researcher: Service | None = None,
    coder: Service | None = None,
) -> MeshTrace:
    """One task's trace across three services, the way the mesh links them.

    orchestrator: task.submit (server) → planner.run → invoke_agent (tokens summed) →
    chat (tokens) and two delegate spans (producer); each worker: a consumer span
    continued from the producer's injected headers → invoke_agent → chat (tokens),
    and the coder's tool call fails with an error status and an exception event.
    """
    orch = orchestrator or Service("orchestrator", "orchestrator-7d9f")
    res = researcher or Service("researcher", "researcher-1")
    cod = coder or Service("coder", "coder-2")
    ids: dict[str, str] = {}
    headers: dict[str, dict[str, str]] = {}

    with orch.tracer.start_as_current_span("task.submit", kind=trace.SpanKind.SERVER) as root:
        ids["task.submit"] = _hex_span_id(root)
        with orch.tracer.start_as_current_span("planner.run") as planner:
            ids["planner.run"] = _hex_span_id(planner)
            planner.set_attribute("agentmesh.task_id", "task-1")
            with orch.tracer.start_as_current_span(
                "invoke_agent planner",
                attributes={"gen_ai.operation.name": "invoke_agent"},
            ) as loop:
                ids["invoke_agent planner"] = _hex_span_id(loop)
                with orch.tracer.start_as_current_span(
                    "chat claude-sonnet-4-5",
                    kind=trace.SpanKind.CLIENT,
                    attributes={
                        "gen_ai.operation.name": "chat",
                        "gen_ai.request.model": "claude-sonnet-4-5",
                        "gen_ai.usage.input_tokens": 812,
                        "gen_ai.usage.output_tokens": 95,
                        "gen_ai.response.finish_reasons": ["tool_use"],
                    },
                ) as chat:
                    ids["chat planner"] = _hex_span_id(chat)
                for role in ("researcher", "coder"):
                    with orch.tracer.start_as_current_span(
                        f"delegate {role}",
                        kind=trace.SpanKind.PRODUCER,
                        attributes={"messaging.destination.name": role},
                    ) as produce:
                        ids[f"delegate {role}"] = _hex_span_id(produce)
                        carrier: dict[str, str] = {}
                        propagate.inject(carrier)
                        headers[role] = carrier
                loop.set_attribute("gen_ai.usage.input_tokens", 812 + 1000 + 2000)
                loop.set_attribute("gen_ai.usage.output_tokens", 95 + 100 + 200)
        trace_id = format(root.get_span_context().trace_id, "032x")

    for service, tokens, label in ((res, (1000, 100), "researcher"), (cod, (2000, 200), "coder")):
        parent = propagate.extract(headers[label])
        with service.tracer.start_as_current_span(
            f"run {label}", context=parent, kind=trace.SpanKind.CONSUMER
        ) as consume:
            ids[f"run {label}"] = _hex_span_id(consume)
            consume.set_attribute("agentmesh.subtask_id", f"sub-{label}")
            consume.set_attribute("agentmesh.retry", False)
            consume.set_attribute("agentmesh.scores", [0.5, 1.25])
            with service.tracer.start_as_current_span(
                f"chat {label}",
                kind=trace.SpanKind.CLIENT,
                attributes={
                    "gen_ai.operation.name": "chat",
                    "gen_ai.usage.input_tokens": tokens[0],
                    "gen_ai.usage.output_tokens": tokens[1],
                },
            ) as chat:
                ids[f"chat {label}"] = _hex_span_id(chat)
            if label == "coder":
                with service.tracer.start_as_current_span("tool run_python") as tool:
                    ids["tool run_python"] = _hex_span_id(tool)
                    tool.record_exception(RuntimeError("exit status 1"))
                    tool.set_status(Status(StatusCode.ERROR, "exit status 1"))

    return MeshTrace(
        trace_id=trace_id,
        services={"orchestrator": orch, "researcher": res, "coder": cod},
        span_ids=ids,
    )
