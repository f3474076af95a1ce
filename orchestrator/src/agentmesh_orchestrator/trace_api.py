"""``GET /tasks/{task_id}/trace``: a task's spans, read from the collector's traces file.

The collector (the one place telemetry leaves the mesh) appends every trace batch
to an OTLP/JSON lines file on the ``traces`` volume, which the orchestrator mounts
read-only; this route finds the task's trace id on its record and reads the spans
of that trace from there. Exporters batch (the SDKs and the collector each hold
spans for a moment), so ``wait`` polls until the trace is complete: every service
the task involved has spans in the file (the orchestrator, and the role of each of
its subtasks) and, once the task has ended, the spans form one tree (the root's own
parent may be missing: the CLI's span, when the CLI does not export) whose model-call
spans account for every input token on the task's record.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Annotated

from agentmesh_shared.models import TaskRecord
from fastapi import FastAPI, HTTPException, Query
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool

from agentmesh_orchestrator.traces import Span, TraceRead, TraceReader, TracesUnavailableError

ORCHESTRATOR_SERVICE = "orchestrator"
POLL_INTERVAL_S = 1.0
MAX_WAIT_S = 30.0


class TaskTrace(BaseModel):
    task_id: str
    trace_id: str
    spans: list[Span]
    services: list[str] = Field(description="services that have spans in the trace")
    expected_services: list[str] = Field(
        description="the orchestrator and the role of every subtask of the task"
    )
    complete: bool = Field(
        description="every expected service has spans and, once the task ended, every parent"
    )
    missing_parents: int = Field(0, description="spans whose parent span is not in the trace")
    skipped_lines: int = Field(0, description="matching lines of the file that did not parse")


def expected_services(record: TaskRecord) -> set[str]:
    return {ORCHESTRATOR_SERVICE} | {subtask.role.value for subtask in record.subtasks}


def missing_parents(spans: list[Span]) -> int:
    present = {span.span_id for span in spans}
    return sum(1 for span in spans if span.parent_span_id and span.parent_span_id not in present)


def roots(spans: list[Span]) -> int:
    """Spans shown at the top of the tree: no parent, or a parent not (yet) in the trace."""
    present = {span.span_id for span in spans}
    return sum(1 for span in spans if span.parent_span_id not in present)


def chat_input_tokens(spans: list[Span]) -> int:
    """Input tokens over the trace's model-call (GenAI ``chat``) spans."""
    return sum(
        int(span.attributes.get("gen_ai.usage.input_tokens", 0) or 0)
        for span in spans
        if span.attributes.get("gen_ai.operation.name") == "chat"
    )


def is_complete(record: TaskRecord, found: TraceRead) -> bool:
    if not expected_services(record) <= found.services:
        return False
    if not record.status.terminal:
        # A running task's open spans are not exported yet.
        return True
    # An ended task's spans should all be in, making one tree (whose root's parent may
    # be the CLI's span, not exported). A model call's span is a leaf, so the tree can
    # look whole without the last one a busy replica still holds: the chat spans must
    # also account for every input token the task's record counts.
    return roots(found.spans) <= 1 and chat_input_tokens(found.spans) >= record.usage.input_tokens


def register_trace_routes(
    app: FastAPI,
    reader_factory: Callable[[], TraceReader],
    get_task: Callable[[str], TaskRecord | None],
) -> None:
    """Add ``GET /tasks/{task_id}/trace`` to ``app``.

    ``reader_factory`` gives the reader of the traces file (its path comes from the
    settings); ``get_task`` returns a task record, or None for an unknown id.
    """

    @app.get(
        "/tasks/{task_id}/trace",
        response_model=TaskTrace,
        responses={
            404: {"description": "unknown task id"},
            409: {"description": "the task has no trace id"},
            503: {"description": "no traces file yet (the collector has exported nothing)"},
        },
    )
    async def task_trace(
        task_id: str,
        wait: Annotated[float, Query(ge=0, le=MAX_WAIT_S)] = 0,
    ) -> TaskTrace:
        record = await run_in_threadpool(get_task, task_id)
        if record is None:
            raise HTTPException(status_code=404, detail=f"unknown task id {task_id!r}")
        if not record.trace_id:
            raise HTTPException(
                status_code=409, detail=f"task {task_id} has no trace id on its record"
            )
        reader = reader_factory()
        deadline = time.monotonic() + wait
        while True:
            # The record gains subtasks while the task runs: re-read it each round.
            expected = expected_services(record)
            try:
                found: TraceRead = await run_in_threadpool(reader.read, record.trace_id)
            except TracesUnavailableError as err:
                if time.monotonic() >= deadline:
                    raise HTTPException(status_code=503, detail=str(err)) from None
            except ValueError as err:
                raise HTTPException(status_code=409, detail=str(err)) from None
            else:
                complete = is_complete(record, found)
                if complete or time.monotonic() >= deadline:
                    return TaskTrace(
                        task_id=task_id,
                        trace_id=found.trace_id,
                        spans=found.spans,
                        services=sorted(found.services),
                        expected_services=sorted(expected),
                        complete=complete,
                        missing_parents=missing_parents(found.spans),
                        skipped_lines=found.skipped_lines,
                    )
            await asyncio.sleep(min(POLL_INTERVAL_S, max(deadline - time.monotonic(), 0)))
            record = await run_in_threadpool(get_task, task_id) or record
