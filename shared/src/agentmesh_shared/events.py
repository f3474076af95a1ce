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
    client.xadd(
        keys.task_events(task_id),
        {"event": encode(task_id, kind, message, **data)},
        maxlen=MAX_EVENTS,
        approximate=True,
    )


def encode(task_id: str, kind: str, message: str, **data: Any) -> str:
    """The stream entry's ``event`` field; for a script that appends it itself (with
    ``XADD <stream> MAXLEN ~ MAX_EVENTS * event <this>``)."""
    return TaskEvent(task_id=task_id, kind=kind, message=message, data=data).model_dump_json(
        exclude={"id"}
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
