"""Read one trace's spans from the collector's OTLP/JSON lines file.

The collector keeps traces as OTLP/JSON lines: every line is one
``ExportTraceServiceRequest`` (``{"resourceSpans": [...]}``), the format of the
contrib collector's ``file`` exporter, which the offline stand-in writes too. A
line holds a whole export batch, so one trace is spread over many lines (and over
rotated files), and one line holds spans of many traces.

Finding a trace must stay cheap on files of ~100 MB: the files are read in large
blocks and only the lines that contain the trace id (in hex, as the contrib
exporter writes it, or in base64, as protobuf's canonical JSON does) are
JSON-parsed. A line that does not parse (cut off while the collector writes it, or
corrupt) is skipped and counted.

Both JSON dialects are understood: the collector's (hex ids, integer enums) and
protobuf's canonical mapping (base64 ids, enum names; snake_case field names too).
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import re
import time
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field, computed_field

SpanStatusCode = Literal["unset", "ok", "error"]

_TRACE_ID = re.compile(r"^[0-9a-f]{32}$")
_READ_BLOCK = 8 * 1024 * 1024
_COMPRESSED = (".gz", ".zst", ".zstd", ".bz2", ".xz")

_KINDS = ("unspecified", "internal", "server", "client", "producer", "consumer")
_STATUSES: tuple[SpanStatusCode, ...] = ("unset", "ok", "error")


class TracesUnavailableError(FileNotFoundError):
    """Neither the traces file nor any rotated sibling of it exists (yet)."""

    def __init__(self, path: Path) -> None:
        super().__init__(
            f"no traces file at {path}: the collector creates it when it exports its first "
            "trace batch (is the otel-collector running, and is its traces volume mounted here?)"
        )
        self.path = path


class SpanEvent(BaseModel):
    name: str
    time_unix_nano: int
    attributes: dict[str, Any] = Field(default_factory=dict)


class Span(BaseModel):
    """One span, flattened from OTLP: resource and scope folded in, ids in hex."""

    trace_id: str
    span_id: str
    parent_span_id: str | None = None
    service: str
    instance: str | None = None
    name: str
    kind: str = "unspecified"
    scope: str | None = None
    start_unix_nano: int
    end_unix_nano: int
    duration_ms: float
    status: SpanStatusCode = "unset"
    status_message: str | None = None
    attributes: dict[str, Any] = Field(default_factory=dict)
    events: list[SpanEvent] = Field(default_factory=list)

    @computed_field  # type: ignore[prop-decorator]
    @property
    def start_time(self) -> datetime:
        return datetime.fromtimestamp(self.start_unix_nano / 1e9, tz=UTC)

    @computed_field  # type: ignore[prop-decorator]
    @property
    def end_time(self) -> datetime:
        return datetime.fromtimestamp(self.end_unix_nano / 1e9, tz=UTC)


class TraceRead(BaseModel):
    """What one read of the traces files found for a trace id."""

    trace_id: str
    spans: list[Span]
    files: list[str] = Field(default_factory=list, description="files read, oldest first")
    skipped_lines: int = Field(0, description="lines with the trace id that did not parse")

    @property
    def services(self) -> set[str]:
        return {span.service for span in self.spans}


def normalize_trace_id(trace_id: str) -> str:
    """A trace id as 32 lower-case hex digits; ValueError for anything else."""
    value = trace_id.strip().lower()
    if not _TRACE_ID.match(value) or value == "0" * 32:
        msg = f"not a W3C trace id (32 hex digits, not all zero): {trace_id!r}"
        raise ValueError(msg)
    return value


_LISTING_RETRIES = 3  # listings tried again when one finds no file at all
_LISTING_RETRY_S = 0.05


class TraceReader:
    """Reads spans of one trace from ``path`` and its rotated siblings.

    Rotated files are recognised in both writers' naming: the contrib exporter's
    ``traces-<timestamp>.jsonl`` (the timestamp goes before the extension) and the
    offline stand-in's ``traces.jsonl.1``. Compressed backups are ignored.
    """

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)

    def files(self) -> list[Path]:
        """The current file and its rotated siblings that exist, oldest first."""
        directory, name = self.path.parent, self.path.name
        stem, suffix = self.path.stem, self.path.suffix
        patterns = {f"{stem}*{suffix}", f"{name}.*", f"{name}-*"} if suffix else {f"{name}*"}
        found: set[Path] = set()
        try:
            for pattern in patterns:
                found.update(p for p in directory.glob(pattern) if not p.name.endswith(_COMPRESSED))
        except OSError:
            return []
        dated: list[tuple[float, int, str, Path]] = []
        for candidate in found:
            try:
                if not candidate.is_file():
                    continue
                mtime = candidate.stat().st_mtime
            except OSError:  # rotated away or deleted between the listing and now
                continue
            # the current file sorts last whatever its mtime, since it gets the newest lines
            dated.append((mtime, int(candidate == self.path), candidate.name, candidate))
        return [entry[3] for entry in sorted(dated, key=lambda e: (e[1], e[0], e[2]))]

    def read(self, trace_id: str) -> TraceRead:
        """Every span of the trace, ordered by start time.

        Raises ValueError for a malformed trace id and TracesUnavailableError when no
        traces file exists. A span seen more than once (an export retried by the
        collector) is kept once, as last written.
        """
        wanted = normalize_trace_id(trace_id)
        files = self.files()
        for _ in range(_LISTING_RETRIES):
            if files:
                break
            # The listing is a glob per name pattern and then a stat of each match;
            # the collector renaming the file to .1 while it runs can hide it under
            # both names (seen in the integration tier).
            time.sleep(_LISTING_RETRY_S)
            files = self.files()
        if not files:
            raise TracesUnavailableError(self.path)
        needles = _needles(wanted)
        spans: dict[str, Span] = {}
        skipped = 0
        read_files: list[str] = []
        for path in files:
            try:
                lines = list(_lines_containing(path, needles))
            except OSError:
                continue
            read_files.append(str(path))
            for line in lines:
                try:
                    request = json.loads(line)
                except ValueError:
                    skipped += 1
                    continue
                if not isinstance(request, dict):
                    skipped += 1
                    continue
                try:
                    for span in _spans_of(request, wanted):
                        spans[span.span_id] = span
                except (TypeError, ValueError, AttributeError, KeyError):
                    skipped += 1
        ordered = sorted(spans.values(), key=lambda s: (s.start_unix_nano, s.end_unix_nano))
        return TraceRead(trace_id=wanted, spans=ordered, files=read_files, skipped_lines=skipped)

    def spans(self, trace_id: str) -> list[Span]:
        return self.read(trace_id).spans


# --- finding candidate lines ------------------------------------------------------------


def _needles(trace_id: str) -> tuple[bytes, ...]:
    raw = bytes.fromhex(trace_id)
    return (
        trace_id.encode(),
        trace_id.upper().encode(),
        base64.b64encode(raw),
        base64.urlsafe_b64encode(raw),
    )


def _lines_containing(path: Path, needles: tuple[bytes, ...]) -> Iterator[bytes]:
    """The lines of a file that contain any needle, in file order.

    Reads in large blocks and searches each block with ``bytes.find`` (C speed), so
    the cost is one pass over the file plus parsing the few matching lines. A line
    still being written (no newline yet) is returned too; it parses or is skipped.
    """
    carry = b""
    with path.open("rb") as handle:
        while block := handle.read(_READ_BLOCK):
            data = carry + block if carry else block
            cut = data.rfind(b"\n") + 1
            if cut == 0:
                carry = data
                continue
            yield from _matching_lines(data, cut, needles)
            carry = data[cut:]
    if carry:
        yield from _matching_lines(carry, len(carry), needles)


def _matching_lines(data: bytes, end: int, needles: Iterable[bytes]) -> Iterator[bytes]:
    starts: set[int] = set()
    for needle in needles:
        position = data.find(needle, 0, end)
        while position != -1:
            start = data.rfind(b"\n", 0, position) + 1
            stop = data.find(b"\n", position, end)
            stop = end if stop == -1 else stop
            starts.add(start)
            position = data.find(needle, stop, end)
    for start in sorted(starts):
        stop = data.find(b"\n", start, end)
        line = data[start : end if stop == -1 else stop].strip()
        if line:
            yield line


# --- decoding OTLP/JSON -----------------------------------------------------------------


def _field(message: dict[str, Any], camel: str, snake: str) -> Any:
    value = message.get(camel)
    return message.get(snake) if value is None else value


def _list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


def _id_hex(value: Any, size: int) -> str | None:
    """An OTLP id as lower-case hex: hex as written by the collector, base64 by protobuf."""
    if not isinstance(value, str) or not value:
        return None
    if len(value) == size * 2:
        try:
            bytes.fromhex(value)
        except ValueError:
            pass
        else:
            return value.lower()
    for decode in (base64.b64decode, base64.urlsafe_b64decode):
        try:
            raw = decode(value + "=" * (-len(value) % 4))
        except (binascii.Error, ValueError):
            continue
        if len(raw) == size:
            return raw.hex()
    return None


def any_value(value: Any) -> Any:
    """An OTLP ``AnyValue`` as a Python value (int64 strings become ints, lists, dicts)."""
    if not isinstance(value, dict):
        return value
    for camel, snake in (("stringValue", "string_value"), ("boolValue", "bool_value")):
        if camel in value or snake in value:
            return _field(value, camel, snake)
    if "intValue" in value or "int_value" in value:
        return int(_field(value, "intValue", "int_value"))
    if "doubleValue" in value or "double_value" in value:
        number = float(_field(value, "doubleValue", "double_value"))
        return number if math.isfinite(number) else str(number)
    if "bytesValue" in value or "bytes_value" in value:
        return _field(value, "bytesValue", "bytes_value")
    if "arrayValue" in value or "array_value" in value:
        array = _field(value, "arrayValue", "array_value") or {}
        return [any_value(item) for item in _list(array.get("values"))]
    if "kvlistValue" in value or "kvlist_value" in value:
        kvlist = _field(value, "kvlistValue", "kvlist_value") or {}
        return attributes(kvlist.get("values"))
    return None


def attributes(key_values: Any) -> dict[str, Any]:
    """OTLP ``KeyValue`` list as a dict."""
    flat: dict[str, Any] = {}
    for item in _list(key_values):
        if isinstance(item, dict) and isinstance(item.get("key"), str):
            flat[item["key"]] = any_value(item.get("value"))
    return flat


def _enum(value: Any, names: tuple[str, ...], prefix: str) -> str:
    if isinstance(value, int) and 0 <= value < len(names):
        return names[value]
    if isinstance(value, str):
        if value.isdigit() and int(value) < len(names):
            return names[int(value)]
        name = value.lower().removeprefix(prefix)
        if name in names:
            return name
    return names[0]


def _status(value: Any) -> SpanStatusCode:
    name = _enum(value, _STATUSES, "status_code_")
    return "ok" if name == "ok" else "error" if name == "error" else "unset"


def _nanos(value: Any) -> int:
    try:
        return int(value or 0)
    except (TypeError, ValueError):
        return 0


def _spans_of(request: dict[str, Any], trace_id: str) -> Iterator[Span]:
    for resource_spans in _list(_field(request, "resourceSpans", "resource_spans")):
        resource = attributes((resource_spans.get("resource") or {}).get("attributes"))
        service = str(resource.get("service.name") or "unknown")
        instance = resource.get("service.instance.id")
        for scope_spans in _list(_field(resource_spans, "scopeSpans", "scope_spans")):
            scope = (scope_spans.get("scope") or {}).get("name") or None
            for raw in _list(scope_spans.get("spans")):
                if _id_hex(_field(raw, "traceId", "trace_id"), 16) != trace_id:
                    continue
                span_id = _id_hex(_field(raw, "spanId", "span_id"), 8)
                if span_id is None:
                    continue
                yield _span(raw, trace_id, span_id, service, instance, scope)


def _span(
    raw: dict[str, Any],
    trace_id: str,
    span_id: str,
    service: str,
    instance: Any,
    scope: str | None,
) -> Span:
    start = _nanos(_field(raw, "startTimeUnixNano", "start_time_unix_nano"))
    end = _nanos(_field(raw, "endTimeUnixNano", "end_time_unix_nano"))
    status = raw.get("status") or {}
    events = [
        SpanEvent(
            name=str(event.get("name", "")),
            time_unix_nano=_nanos(_field(event, "timeUnixNano", "time_unix_nano")),
            attributes=attributes(event.get("attributes")),
        )
        for event in _list(raw.get("events"))
        if isinstance(event, dict)
    ]
    return Span(
        trace_id=trace_id,
        span_id=span_id,
        parent_span_id=_id_hex(_field(raw, "parentSpanId", "parent_span_id"), 8),
        service=service,
        instance=None if instance is None else str(instance),
        name=str(raw.get("name", "")),
        kind=_enum(raw.get("kind"), _KINDS, "span_kind_"),
        scope=scope,
        start_unix_nano=start,
        end_unix_nano=end,
        duration_ms=round(max(end - start, 0) / 1e6, 3),
        status=_status(status.get("code")),
        status_message=status.get("message") or None,
        attributes=attributes(raw.get("attributes")),
        events=events,
    )
