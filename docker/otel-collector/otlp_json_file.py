"""A rotel trace processor that appends every span batch to a file as OTLP/JSON.

rotel (the offline stand-in for the OpenTelemetry Collector) has no file
exporter; it calls `process_spans` for every batch it receives, in its embedded
Python. This processor writes each batch as one line holding an OTLP/JSON
`ExportTraceServiceRequest` (`{"resourceSpans": [...]}`), the line format of the
contrib collector's `file` exporter, so the same reader works with both
collectors. The spans are left unchanged for rotel's own exporter.

Environment:
  AGENTMESH_TRACES_FILE          where to append (default /var/lib/otel/traces.jsonl)
  AGENTMESH_TRACES_FILE_MAX_MB   past this size the file is moved to <file>.1 (default 100)
"""

from __future__ import annotations

import base64
import json
import os
from pathlib import Path
from typing import Any

TRACES_FILE = Path(os.environ.get("AGENTMESH_TRACES_FILE", "/var/lib/otel/traces.jsonl"))
MAX_BYTES = int(float(os.environ.get("AGENTMESH_TRACES_FILE_MAX_MB", "100")) * 1024 * 1024)


def _value(any_value: Any) -> dict[str, Any]:
    value = getattr(any_value, "value", any_value)
    if value is None:
        return {}
    if isinstance(value, bool):
        return {"boolValue": value}
    if isinstance(value, int):
        return {"intValue": str(value)}
    if isinstance(value, float):
        return {"doubleValue": value}
    if isinstance(value, str):
        return {"stringValue": value}
    if isinstance(value, bytes):
        return {"bytesValue": base64.b64encode(value).decode()}
    items = list(value)
    if items and hasattr(items[0], "key"):
        return {"kvlistValue": {"values": _attributes(items)}}
    return {"arrayValue": {"values": [_value(item) for item in items]}}


def _attributes(key_values: Any) -> list[dict[str, Any]]:
    return [{"key": kv.key, "value": _value(kv.value)} for kv in key_values]


def _code(status_code: Any) -> int:
    return int(getattr(status_code, "value", status_code) or 0)


def _span(span: Any) -> dict[str, Any]:
    encoded: dict[str, Any] = {
        "traceId": span.trace_id.hex(),
        "spanId": span.span_id.hex(),
        "name": span.name,
        "kind": _code(span.kind),
        "startTimeUnixNano": str(span.start_time_unix_nano),
        "endTimeUnixNano": str(span.end_time_unix_nano),
        "attributes": _attributes(span.attributes),
        "events": [
            {
                "timeUnixNano": str(event.time_unix_nano),
                "name": event.name,
                "attributes": _attributes(event.attributes),
            }
            for event in span.events
        ],
        "links": [
            {
                "traceId": link.trace_id.hex(),
                "spanId": link.span_id.hex(),
                "traceState": link.trace_state,
                "attributes": _attributes(link.attributes),
                "flags": link.flags,
            }
            for link in span.links
        ],
        "flags": span.flags,
    }
    if span.parent_span_id:
        encoded["parentSpanId"] = span.parent_span_id.hex()
    if span.trace_state:
        encoded["traceState"] = span.trace_state
    if span.status is not None:
        encoded["status"] = {"code": _code(span.status.code), "message": span.status.message}
    return encoded


def _resource_spans(resource_spans: Any) -> dict[str, Any]:
    resource = resource_spans.resource
    scope_spans = []
    for scope_span in resource_spans.scope_spans:
        scope = scope_span.scope
        scope_spans.append(
            {
                "scope": {"name": scope.name, "version": scope.version} if scope else {},
                "spans": [_span(span) for span in scope_span.spans],
                "schemaUrl": scope_span.schema_url,
            }
        )
    return {
        "resource": {"attributes": _attributes(resource.attributes) if resource else []},
        "scopeSpans": scope_spans,
        "schemaUrl": resource_spans.schema_url,
    }


def _rotate_if_full() -> None:
    try:
        if TRACES_FILE.stat().st_size >= MAX_BYTES:
            TRACES_FILE.replace(TRACES_FILE.with_name(TRACES_FILE.name + ".1"))
    except FileNotFoundError:
        pass


def process_spans(resource_spans: Any) -> None:
    line = json.dumps({"resourceSpans": [_resource_spans(resource_spans)]}, separators=(",", ":"))
    _rotate_if_full()
    with TRACES_FILE.open("a", encoding="utf-8") as traces:
        traces.write(line + "\n")
