"""The one telemetry set-up every service calls, and W3C trace-context helpers.

Traces and metrics are always produced in-process (so every task has a real trace
id); they are exported over OTLP/HTTP (protobuf), batched, only when ``OTEL_EXPORTER_OTLP_ENDPOINT``
is set — in the mesh, the collector sidecar. ``shutdown_telemetry`` flushes both on
the way out. Prompt and completion text are recorded on LLM spans only when
``AGENTMESH_TRACE_CONTENT=true``.
"""

from __future__ import annotations

import atexit
import os
import socket
import threading
from collections.abc import Mapping, MutableMapping

from opentelemetry import context, metrics, propagate, trace
from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor

VERSION = "0.1.0"
_lock = threading.Lock()
_tracer_provider: TracerProvider | None = None
_meter_provider: MeterProvider | None = None


def export_enabled() -> bool:
    return (
        bool(os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT"))
        and os.environ.get("OTEL_SDK_DISABLED", "false").lower() != "true"
    )


def capture_content() -> bool:
    return os.environ.get("AGENTMESH_TRACE_CONTENT", "false").lower() == "true"


def resource_for(service: str, instance: str | None = None) -> Resource:
    return Resource.create(
        {
            "service.name": service,
            "service.version": VERSION,
            "service.namespace": "agentmesh",
            "service.instance.id": instance or socket.gethostname(),
            "deployment.environment.name": os.environ.get("AGENTMESH_ENVIRONMENT", "development"),
        }
    )


def setup_telemetry(
    service: str,
    *,
    instance: str | None = None,
    extra_processors: tuple[SpanProcessor, ...] = (),
) -> None:
    """Install the process's tracer and meter providers (once)."""
    global _tracer_provider, _meter_provider
    with _lock:
        if _tracer_provider is not None:
            return
        resource = resource_for(service, instance)
        tracer_provider = TracerProvider(resource=resource)
        readers = []
        if export_enabled():
            tracer_provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
            readers.append(
                PeriodicExportingMetricReader(OTLPMetricExporter(), export_interval_millis=10_000)
            )
        for processor in extra_processors:
            tracer_provider.add_span_processor(processor)
        meter_provider = MeterProvider(resource=resource, metric_readers=readers)
        trace.set_tracer_provider(tracer_provider)
        metrics.set_meter_provider(meter_provider)
        _tracer_provider, _meter_provider = tracer_provider, meter_provider
        atexit.register(shutdown_telemetry)


def shutdown_telemetry() -> None:
    """Flush and stop exporting; safe to call more than once."""
    global _tracer_provider, _meter_provider  # noqa: PLW0603
    with _lock:
        tracer_provider, meter_provider = _tracer_provider, _meter_provider
        _tracer_provider = _meter_provider = None
    if tracer_provider is not None:
        tracer_provider.force_flush(5_000)
        tracer_provider.shutdown()
    if meter_provider is not None:
        meter_provider.shutdown(timeout_millis=5_000)


def span_processor() -> SpanProcessor | None:
    """The installed provider's span processor (None before ``setup_telemetry``).

    For spans recorded by a process that cannot export them itself: the sandbox has
    no network, records its span of a run and hands it back to the coder.
    """
    with _lock:
        provider = _tracer_provider
    return provider._active_span_processor if provider is not None else None


def tracer(name: str) -> trace.Tracer:
    return trace.get_tracer(name, VERSION)


def meter(name: str) -> metrics.Meter:
    return metrics.get_meter(name, VERSION)


def inject(carrier: MutableMapping[str, str] | None = None) -> dict[str, str]:
    """The current context as W3C headers (``traceparent``, ``tracestate``)."""
    headers: dict[str, str] = dict(carrier or {})
    propagate.inject(headers)
    return headers


def extract(carrier: Mapping[str, str] | None) -> context.Context:
    return propagate.extract(dict(carrier or {}))


def messaging_attributes(operation: str, queue: str, message_id: str) -> dict[str, str]:
    """Semantic-convention attributes of a broker hop (the producer and consumer spans)."""
    return {
        "messaging.system": "celery",
        "messaging.operation.type": operation,
        "messaging.destination.name": queue,
        "messaging.message.id": message_id,
    }


def current_ids() -> tuple[str, str] | None:
    """(trace_id, span_id) of the current span, as hex, if there is one."""
    ctx = trace.get_current_span().get_span_context()
    if not ctx.is_valid:
        return None
    return format(ctx.trace_id, "032x"), format(ctx.span_id, "016x")


def current_trace_id() -> str | None:
    ids = current_ids()
    return ids[0] if ids else None
