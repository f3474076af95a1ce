"""``orchestrator trace ID``: a task's span tree in the terminal, or as JSON.

Spans are indented under their parents (a span whose parent was never exported
is shown as a root); siblings are in start order. Each line gives the span name,
service, replica (``service.instance.id``), duration, status and, for model calls,
the tokens from ``gen_ai.usage.input_tokens`` / ``gen_ai.usage.output_tokens``.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Iterator, Sequence
from typing import Any

import click

from agentmesh_orchestrator.client import ApiClient
from agentmesh_orchestrator.traces import Span

INPUT_TOKENS = "gen_ai.usage.input_tokens"
OUTPUT_TOKENS = "gen_ai.usage.output_tokens"
JSON_SPAN_FIELDS = (
    "span_id",
    "parent_span_id",
    "service",
    "instance",
    "name",
    "kind",
    "start_time",
    "duration_ms",
    "status",
    "status_message",
    "attributes",
)
MAX_NAME_WIDTH = 64


def fetch_trace(client: ApiClient, task_id: str, wait: float) -> dict[str, Any]:
    result: dict[str, Any] = client.request("GET", f"/tasks/{task_id}/trace", params={"wait": wait})
    return result


def show_trace(client: ApiClient, task_id: str, *, as_json: bool, wait: float) -> None:
    """Fetch a task's trace from the API and print it (the ``trace`` command's body)."""
    found = fetch_trace(client, task_id, wait)
    spans = [Span.model_validate(raw) for raw in found.get("spans", [])]
    if as_json:
        click.echo(json.dumps(trace_json(found["trace_id"], spans), indent=2))
        return
    click.echo(render_trace(found["trace_id"], spans))
    if found.get("complete", True):
        return
    missing = sorted(set(found.get("expected_services", [])) - set(found.get("services", [])))
    what = (
        f"no spans yet from {', '.join(missing)}"
        if missing
        else "some spans' parents are not in the collector's file yet"
    )
    click.echo(
        f"{what} (exporters batch for a few seconds): run again, or pass --wait SECONDS",
        err=True,
    )


def trace_json(trace_id: str, spans: Sequence[Span]) -> dict[str, Any]:
    return {
        "trace_id": trace_id,
        "spans": [span.model_dump(mode="json", include=set(JSON_SPAN_FIELDS)) for span in spans],
    }


def tokens(span: Span) -> tuple[int, int] | None:
    """The span's (input, output) tokens, or None if it records none."""
    if INPUT_TOKENS not in span.attributes and OUTPUT_TOKENS not in span.attributes:
        return None
    return _int(span.attributes.get(INPUT_TOKENS)), _int(span.attributes.get(OUTPUT_TOKENS))


def _int(value: Any) -> int:
    try:
        return int(value or 0)
    except (TypeError, ValueError):
        return 0


def tree(spans: Sequence[Span]) -> list[tuple[str, Span]]:
    """Depth-first (prefix, span) rows; roots are spans whose parent is absent."""
    by_id = {span.span_id: span for span in spans}
    children: defaultdict[str | None, list[Span]] = defaultdict(list)
    for span in spans:
        parent = span.parent_span_id if span.parent_span_id in by_id else None
        children[parent].append(span)
    for siblings in children.values():
        siblings.sort(key=lambda s: (s.start_unix_nano, s.end_unix_nano, s.span_id))

    rows: list[tuple[str, Span]] = []

    def walk(span: Span, lead: str, branch: str, seen: set[str]) -> None:
        rows.append((lead + branch, span))
        seen.add(span.span_id)
        kids = [kid for kid in children.get(span.span_id, []) if kid.span_id not in seen]
        deeper = "" if not branch else lead + ("   " if branch == "└─ " else "│  ")
        for index, kid in enumerate(kids):
            walk(kid, deeper, "└─ " if index == len(kids) - 1 else "├─ ", seen)

    seen: set[str] = set()
    for root in children.get(None, []):
        walk(root, "", "", seen)
    for span in spans:  # parent links that form a cycle: show the spans anyway
        if span.span_id not in seen:
            walk(span, "", "", seen)
    return rows


def total_tokens(spans: Sequence[Span]) -> tuple[int, int]:
    """Tokens of the model calls, without counting a loop span's sum of its calls again.

    Only spans with token counts none of whose descendants also has token counts are
    added up (the agent-loop span carries the sum of the model-call spans below it).
    """
    parents = {span.span_id: span.parent_span_id for span in spans}
    counted = {span.span_id for span in spans if tokens(span) is not None}
    has_counted_descendant: set[str] = set()
    for span_id in counted:
        parent, hops = parents.get(span_id), 0
        while parent is not None and hops < len(parents):
            has_counted_descendant.add(parent)
            parent, hops = parents.get(parent), hops + 1
    total_in = total_out = 0
    for span in spans:
        pair = tokens(span)
        if pair is not None and span.span_id not in has_counted_descendant:
            total_in += pair[0]
            total_out += pair[1]
    return total_in, total_out


def format_duration(ms: float) -> str:
    if ms < 1:
        return f"{ms * 1000:.0f} µs"
    if ms < 1000:
        return f"{ms:.1f} ms"
    if ms < 60_000:
        return f"{ms / 1000:.2f} s"
    return f"{int(ms // 60_000)} m {ms % 60_000 / 1000:04.1f} s"


def _clip(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


def _lines(trace_id: str, spans: Sequence[Span]) -> Iterator[str]:
    if not spans:
        yield f"trace {trace_id}: no spans yet (exporters batch for a few seconds; try again)"
        return
    services = sorted({span.service for span in spans})
    start = min(span.start_unix_nano for span in spans)
    end = max(span.end_unix_nano for span in spans)
    errors = sum(1 for span in spans if span.status == "error")
    summary = (
        f"trace {trace_id}  {len(spans)} spans  {len(services)} services "
        f"({', '.join(services)})  {format_duration((end - start) / 1e6)}"
    )
    total_in, total_out = total_tokens(spans)
    if total_in or total_out:
        summary += f"  tokens {total_in} in / {total_out} out"
    if errors:
        summary += f"  {errors} error{'s' if errors > 1 else ''}"
    yield summary

    rows = tree(spans)
    name_width = min(max(len(prefix + span.name) for prefix, span in rows), MAX_NAME_WIDTH)
    service_width = max(len(span.service) for _, span in rows)
    instance_width = min(max(len(span.instance or "-") for _, span in rows), 28)
    yield ""
    yield (
        f"{'SPAN':<{name_width}}  {'SERVICE':<{service_width}}  {'INSTANCE':<{instance_width}}  "
        f"{'DURATION':>10}  {'STATUS':<6}  TOKENS"
    )
    for prefix, span in rows:
        status = f"{span.status:<6}"
        if span.status == "error":
            status = click.style(status, fg="red")
        line = (
            f"{_clip(prefix + span.name, name_width):<{name_width}}  "
            f"{span.service:<{service_width}}  "
            f"{_clip(span.instance or '-', instance_width):<{instance_width}}  "
            f"{format_duration(span.duration_ms):>10}  "
            f"{status}"
        )
        pair = tokens(span)
        if pair is not None:
            line += f"  {pair[0]} in / {pair[1]} out"
        if span.status == "error" and span.status_message:
            line += f"  {_clip(span.status_message, 120)}"
        yield line.rstrip()


def render_trace(trace_id: str, spans: Sequence[Span]) -> str:
    return "\n".join(_lines(trace_id, spans))
