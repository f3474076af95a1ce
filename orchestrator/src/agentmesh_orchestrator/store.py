"""Task records in Redis: the durable truth about every accepted task.

Only the planner writes records after creation, under the task's planning lease;
workers report through the hand-off. An update is still a guarded read-modify-write
(compare and swap), so a replica that lost its lease while it paused cannot overwrite a
newer record without noticing. Creation admits a task only while fewer than the
configured number of tasks are unfinished, checked and recorded atomically.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, cast

import redis
from agentmesh_shared import events, handoff, keys
from agentmesh_shared.models import TaskRecord, TaskStatus

ACTIVE = keys.ACTIVE_TASKS

# KEYS: active, record, index, due, events, doorbell; ARGV: id, record json, created_at,
# limit, the "accepted" event, events kept, doorbell length. The task, its first event
# and the planners' doorbell in one step: one round trip for the API's busiest call.
# Returns -1 when admitted, else the number of unfinished tasks.
_ADMIT = (
    handoff.WAKE_LUA
    + """
local active = redis.call('SCARD', KEYS[1])
if active >= tonumber(ARGV[4]) then return active end
redis.call('SET', KEYS[2], ARGV[2])
redis.call('ZADD', KEYS[3], ARGV[3], ARGV[1])
redis.call('SADD', KEYS[1], ARGV[1])
redis.call('XADD', KEYS[5], 'MAXLEN', '~', ARGV[6], '*', 'event', ARGV[5])
wake(KEYS[4], KEYS[6], ARGV[1], ARGV[3], tonumber(ARGV[7]))
return -1
"""
)


# KEYS: record, active; ARGV: expected json, new json, terminal (0/1), id.
_SWAP = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[1], ARGV[2])
if ARGV[3] == '1' then redis.call('SREM', KEYS[2], ARGV[4]) end
return 1
"""


class AdmissionRefusedError(Exception):
    """The mesh holds as many unfinished tasks as it admits."""

    def __init__(self, active: int, limit: int) -> None:
        super().__init__(f"{active} unfinished tasks, limit {limit}")
        self.active = active
        self.limit = limit


def idempotency_key(key: str) -> str:
    return f"{keys.PREFIX}:idempotency:{key}"


class TaskStore:
    def __init__(self, client: redis.Redis) -> None:
        self.redis = client
        self._admit = client.register_script(_ADMIT)
        self._swap = client.register_script(_SWAP)

    def create(
        self, record: TaskRecord, idempotency: str | None = None, *, limit: int
    ) -> TaskRecord:
        """Store a new record, record its "task.queued" event and schedule its first
        planning step (ringing the planners' doorbell), atomically.

        With an idempotency key, return the task it already names. Past ``limit``
        unfinished tasks, raise :class:`AdmissionRefusedError` and store nothing.
        """
        if idempotency is not None:
            claimed = self.redis.set(
                idempotency_key(idempotency), record.id, nx=True, ex=keys.RETENTION_S
            )
            if not claimed:
                existing_id = cast("str | None", self.redis.get(idempotency_key(idempotency)))
                existing = self.get(existing_id) if existing_id else None
                if existing is not None:
                    return existing
        active = int(
            cast(
                "int",
                self._admit(
                    keys=[
                        ACTIVE,
                        keys.task(record.id),
                        keys.TASK_INDEX,
                        keys.PLAN_DUE,
                        keys.task_events(record.id),
                        keys.PLAN_DOORBELL,
                    ],
                    args=[
                        record.id,
                        record.model_dump_json(),
                        record.created_at,
                        limit,
                        events.encode(record.id, "task.queued", "task accepted"),
                        events.MAX_EVENTS,
                        handoff.DOORBELL_MAX,
                    ],
                ),
            )
        )
        if active >= 0:
            if idempotency is not None:
                self.redis.delete(idempotency_key(idempotency))
            raise AdmissionRefusedError(active, limit)
        return record

    def make_room(self, cap: int, scan: int = 1000) -> int:
        """Keep at most ``cap - 1`` stored tasks by expiring the oldest finished ones.

        Returns how many tasks are stored afterwards. Unfinished tasks are never
        expired: when the oldest ``scan`` are all unfinished, nothing is, and the
        caller refuses the new task instead.
        """
        stored = int(self.redis.zcard(keys.TASK_INDEX))
        excess = stored - cap + 1
        if excess <= 0:
            return stored
        oldest = cast("list[str]", self.redis.zrange(keys.TASK_INDEX, 0, max(excess, scan) - 1))
        active = cast("list[int]", self.redis.smismember(ACTIVE, oldest)) if oldest else []
        finished = [tid for tid, is_active in zip(oldest, active, strict=True) if not is_active]
        doomed = finished[:excess]
        if not doomed:
            return stored
        pipe = self.redis.pipeline()
        for tid in doomed:
            record = self.get(tid)
            subtasks = [s.id for s in record.subtasks] if record is not None else []
            pipe.delete(
                keys.task(tid),
                keys.task_events(tid),
                keys.checkpoint(tid),
                keys.cancel_flag(tid),
                keys.budget(tid),
                keys.task_lease(tid),
                keys.task_stepping(tid),
                handoff.awaited_key(tid),
                *(k(sid) for sid in subtasks for k in handoff.SUBTASK_KEYS),
            )
            pipe.zrem(keys.TASK_INDEX, tid)
            pipe.zrem(keys.PLAN_DUE, tid)
        pipe.execute()
        return stored - len(doomed)

    def get(self, task_id: str) -> TaskRecord | None:
        raw = cast("str | None", self.redis.get(keys.task(task_id)))
        return TaskRecord.model_validate_json(raw) if raw else None

    def update(self, task_id: str, change: Callable[[TaskRecord], Any]) -> TaskRecord:
        """Apply ``change`` to the stored record; retried if the record changed meanwhile."""
        key = keys.task(task_id)
        while True:
            raw = cast("str | None", self.redis.get(key))
            if raw is None:
                msg = f"unknown task {task_id}"
                raise KeyError(msg)
            record = TaskRecord.model_validate_json(raw)
            change(record)
            record.updated_at = time.time()
            swapped = self._swap(
                keys=[key, ACTIVE],
                args=[raw, record.model_dump_json(), int(record.status.terminal), task_id],
            )
            if swapped:
                return record

    def recent(self, limit: int = 50, status: TaskStatus | None = None) -> list[TaskRecord]:
        ids = cast("list[str]", self.redis.zrevrange(keys.TASK_INDEX, 0, max(limit * 4, limit) - 1))
        if not ids:
            return []
        raws = cast("list[str | None]", self.redis.mget([keys.task(i) for i in ids]))
        records = [TaskRecord.model_validate_json(r) for r in raws if r]
        if status is not None:
            records = [r for r in records if r.status is status]
        return records[:limit]

    def page(
        self,
        *,
        offset: int = 0,
        limit: int = 50,
        status: TaskStatus | None = None,
        scan: int = 2000,
    ) -> tuple[list[TaskRecord], int | None]:
        """A page of stored tasks, newest first, and the offset of the next page.

        ``offset`` counts positions in the task index (newest first), not matches: with
        a ``status`` filter the page holds the matches among the next ``scan`` stored
        tasks at most, so a request reads a bounded number of records however rare the
        status is; the next offset (``None`` past the oldest task) continues the scan.
        """
        chunk = max(limit, 100) if status is not None else limit
        found: list[TaskRecord] = []
        position = offset
        while len(found) < limit and position - offset < max(scan, limit):
            ids = cast(
                "list[str]", self.redis.zrevrange(keys.TASK_INDEX, position, position + chunk - 1)
            )
            if not ids:
                return found, None
            raws = cast("list[str | None]", self.redis.mget([keys.task(i) for i in ids]))
            for raw in raws:
                position += 1
                record = TaskRecord.model_validate_json(raw) if raw else None
                if record is not None and (status is None or record.status is status):
                    found.append(record)
                    if len(found) == limit:
                        break
        more = bool(self.redis.zrevrange(keys.TASK_INDEX, position, position))
        return found, position if more else None

    def stored_count(self) -> int:
        return int(self.redis.zcard(keys.TASK_INDEX))

    def active_ids(self) -> list[str]:
        return sorted(cast("set[str]", self.redis.smembers(ACTIVE)))

    def active_count(self) -> int:
        return self.redis.scard(ACTIVE)

    # -- checkpoints ------------------------------------------------------------------
    def save_checkpoint(self, task_id: str, payload: str) -> None:
        self.redis.set(keys.checkpoint(task_id), payload, ex=keys.RETENTION_S)

    def load_checkpoint(self, task_id: str) -> str | None:
        return cast("str | None", self.redis.get(keys.checkpoint(task_id)))
