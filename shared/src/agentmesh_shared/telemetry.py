"""The one telemetry set-up every service calls, and W3C trace-context helpers.

Traces are always created (so every task has a real trace id); they are exported
over OTLP only when ``OTEL_EXPORTER_OTLP_ENDPOINT`` is set, in the mesh pointing at
the collector sidecar.
"""

from __future__ import annotations

import atexit
import os
import socket
from collections.abc import Mapping, MutableMapping

from opentelemetry import context, propagate, trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor

_configured = False


def setup_telemetry(service: str, version: str = "0.1.0") -> None:
    global _configured  # noqa: PLW0603 - one provider per process
    if _configured:
        return
    resource = Resource.create(
        {
            "service.name": service,
            "service.version": version,
            "service.namespace": "agentmesh",
            "service.instance.id": socket.gethostname(),
            "deployment.environment.name": os.environ.get("AGENTMESH_ENVIRONMENT", "development"),
        }
    )
    provider = TracerProvider(resource=resource)
    if (
        os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT")
        and os.environ.get("OTEL_SDK_DISABLED") != "true"
    ):
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import (  # noqa: PLC0415
            OTLPSpanExporter,
        )

        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    trace.set_tracer_provider(provider)
    atexit.register(provider.shutdown)
    _configured = True


def tracer(name: str) -> trace.Tracer:
    return trace.get_tracer(name)


def inject(carrier: MutableMapping[str, str] | None = None) -> dict[str, str]:
    """The current context as W3C headers (``traceparent``, ``tracestate``)."""
    headers: dict[str, str] = dict(carrier or {})
    propagate.inject(headers)
    return headers


def extract(carrier: Mapping[str, str] | None) -> context.Context:
    return propagate.extract(dict(carrier or {}))


def current_trace_id() -> str | None:
    ctx = trace.get_current_span().get_span_context()
    return format(ctx.trace_id, "032x") if ctx.is_valid else None
