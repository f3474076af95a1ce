"""A task's progress as a Redis stream: written by every service, read by --follow."""

from __future__ import annotations

import json
from typing import Any, cast

import redis
import redis.asyncio

from agentmesh_shared import keys
from agentmesh_shared.models import TaskEvent

MAX_EVENTS = 2000


def publish(client: redis.Redis, task_id: str, kind: str, message: str, **data: Any) -> None:
    event = TaskEvent(task_id=task_id, kind=kind, message=message, data=data)
    client.xadd(
        keys.task_events(task_id),
        {"event": event.model_dump_json(exclude={"id"})},
        maxlen=MAX_EVENTS,
        approximate=True,
    )


def read(
    client: redis.Redis,
    task_id: str,
    after: str = "0",
    block_ms: int | None = None,
    count: int = 200,
) -> list[TaskEvent]:
    reply = client.xread({keys.task_events(task_id): after}, count=count, block=block_ms)
    return _parse(reply)


async def read_async(
    client: redis.asyncio.Redis,
    task_id: str,
    after: str = "0",
    block_ms: int | None = None,
    count: int = 200,
) -> list[TaskEvent]:
    """:func:`read` for the API's long-poll: waiting holds a coroutine, not a thread."""
    reply = await client.xread({keys.task_events(task_id): after}, count=count, block=block_ms)
    return _parse(reply)


def _parse(reply: object) -> list[TaskEvent]:
    events: list[TaskEvent] = []
    for _stream, entries in cast("list[tuple[str, list[tuple[str, dict[str, str]]]]]", reply or []):
        for entry_id, fields in entries:
            payload = json.loads(fields["event"])
            payload["id"] = entry_id
            events.append(TaskEvent.model_validate(payload))
    return events
