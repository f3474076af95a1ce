"""Data for the dashboard's tests and bench: stored tasks and big traces, made with
the real models and the real OpenTelemetry SDK, written where the mesh keeps them."""

from __future__ import annotations

import os
import time
from pathlib import Path

import redis
from agentmesh_shared import keys
from agentmesh_shared.models import TaskLimits, TaskRecord, TaskStatus, Usage, new_id

from tests.support.otlp_json import Service, json_line

SERVICES = ("orchestrator", "researcher", "coder")


def seed_finished_tasks(client: redis.Redis, count: int) -> list[TaskRecord]:
    """``count`` finished tasks written straight into the store, one a second apart,
    every fourth failed (nothing for a planner to do: not active, not scheduled)."""
    records = []
    pipe = client.pipeline()
    start = time.time() - count
    for i in range(count):
        record = TaskRecord(
            id=new_id(),
            text=f"seeded task {i}",
            status=TaskStatus.FAILED if i % 4 == 0 else TaskStatus.SUCCEEDED,
            limits=TaskLimits(max_steps=3, token_budget=1000, timeout_s=60),
            usage=Usage(input_tokens=10, output_tokens=1),
            created_at=start + i,
            finished_at=start + i + 0.5,
        )
        pipe.set(keys.task(record.id), record.model_dump_json(), ex=3600)
        pipe.zadd(keys.TASK_INDEX, {record.id: record.created_at})
        records.append(record)
    pipe.execute()
    return records


def append_trace(client: redis.Redis, traces_file: Path, spans: int) -> TaskRecord:
    """A finished task whose trace has ``spans`` spans over three services (a root and
    model-call children), appended to the collector's traces file in one write."""
    services = {name: Service(name, f"{name}-9") for name in SERVICES}
    with services["orchestrator"].tracer.start_as_current_span("task.submit") as root:
        for i in range(spans - 1):
            with services[SERVICES[i % 3]].tracer.start_as_current_span(
                f"chat step {i}",
                attributes={
                    "gen_ai.operation.name": "chat",
                    "gen_ai.usage.input_tokens": 7,
                    "gen_ai.usage.output_tokens": 3,
                },
            ):
                time.sleep(0.0005)
    line = "".join(json_line(s.spans()) for s in services.values())
    fd = os.open(traces_file, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line.encode())
    finally:
        os.close(fd)
    record = seed_finished_tasks(client, 1)[0]
    record.trace_id = format(root.get_span_context().trace_id, "032x")
    record.usage = Usage(input_tokens=7 * (spans - 1))
    client.set(keys.task(record.id), record.model_dump_json(), ex=3600)
    return record
