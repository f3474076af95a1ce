"""Task records in Redis: the durable truth about every accepted task.

Only the planner writes records after creation, under the task's planning lease;
workers report through the hand-off. An update is still a guarded read-modify-write
(compare and swap), so a replica that lost its lease while it paused cannot overwrite a
newer record without noticing. Creation admits a task only while fewer than the
configured number of tasks are unfinished, checked and recorded atomically.

A store remembers the last version of a record it wrote (or read to change it) until
the caller forgets it, and swaps against that: an update is one round trip, and a
swap that finds the record changed meanwhile answers with the current version to
retry on. The comparison is with the stored text itself, so a version remembered
too long costs a retry, never a lost write. An update may carry the task's events
and its checkpoint, written in the same step as the record.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any, cast

import redis
from agentmesh_shared import events, handoff, keys
from agentmesh_shared.events import MAX_EVENTS
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


# KEYS: record, active, events, checkpoint; ARGV: expected json, new json, terminal
# (0/1), id, events kept, checkpoint ('' for none), checkpoint ttl, then the events.
# Returns {1} when swapped, else {0, the stored json or nil}.
_SWAP = """
local current = redis.call('GET', KEYS[1])
if current ~= ARGV[1] then return {0, current} end
redis.call('SET', KEYS[1], ARGV[2])
if ARGV[3] == '1' then redis.call('SREM', KEYS[2], ARGV[4]) end
if ARGV[6] ~= '' then redis.call('SET', KEYS[4], ARGV[6], 'EX', ARGV[7]) end
for i = 8, #ARGV do
  redis.call('XADD', KEYS[3], 'MAXLEN', '~', ARGV[5], '*', 'event', ARGV[i])
end
return {1}
"""
# Records a store remembers at most; past it, it forgets them all (a caller that
# never forgets costs round trips, not memory).
REMEMBERED_MAX = 4096


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
        # task id -> the record's stored json as this store last wrote or read it
        self._known: dict[str, str] = {}

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
                        MAX_EVENTS,
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

    def get(self, task_id: str, *, remember: bool = False) -> TaskRecord | None:
        """The stored record; ``remember``: keep its version for the next update."""
        raw = cast("str | None", self.redis.get(keys.task(task_id)))
        if raw is None:
            return None
        if remember:
            self._remember(task_id, raw)
        return TaskRecord.model_validate_json(raw)

    def update(
        self,
        task_id: str,
        change: Callable[[TaskRecord], Any],
        *,
        events: Sequence[str] = (),
        checkpoint: str | None = None,
    ) -> TaskRecord:
        """Apply ``change`` to the stored record; retried if the record changed meanwhile.

        ``events`` (:func:`agentmesh_shared.events.encode`) are appended to the task's
        events and ``checkpoint`` replaces its checkpoint in the same step as the record,
        once: ``change`` may run more than once, the writes happen with the last run.
        """
        key = keys.task(task_id)
        raw = self._known.get(task_id)
        if raw is None:
            raw = cast("str | None", self.redis.get(key))
        while True:
            if raw is None:
                self.forget(task_id)
                msg = f"unknown task {task_id}"
                raise KeyError(msg)
            record = TaskRecord.model_validate_json(raw)
            change(record)
            record.updated_at = time.time()
            new = record.model_dump_json()
            reply = cast(
                "list[Any]",
                self._swap(
                    keys=[key, ACTIVE, keys.task_events(task_id), keys.checkpoint(task_id)],
                    args=[
                        raw,
                        new,
                        int(record.status.terminal),
                        task_id,
                        MAX_EVENTS,
                        "" if checkpoint is None else checkpoint,
                        keys.RETENTION_S,
                        *events,
                    ],
                ),
            )
            if int(reply[0]) == 1:
                self._remember(task_id, new)
                return record
            raw = cast("str | None", reply[1] if len(reply) > 1 else None)

    def forget(self, task_id: str) -> None:
        """Stop remembering the record's version (the caller's writes to it are done)."""
        self._known.pop(task_id, None)

    def _remember(self, task_id: str, raw: str) -> None:
        if len(self._known) >= REMEMBERED_MAX and task_id not in self._known:
            self._known.clear()
        self._known[task_id] = raw

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

    # -- checkpoints (written by ``update``, with the record) --------------------------
    def load_checkpoint(self, task_id: str) -> str | None:
        return cast("str | None", self.redis.get(keys.checkpoint(task_id)))
