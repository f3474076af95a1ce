"""Task records in Redis: the durable truth about every accepted task.

Only the orchestrator writes records; workers report through their own result keys.
Updates of one task are serialised by a per-task lock, because the parallel
delegations of one task finish on different threads.
"""

from __future__ import annotations

import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, cast

import redis
from agentmesh_shared import keys
from agentmesh_shared.models import TaskRecord, TaskStatus

ACTIVE = f"{keys.PREFIX}:tasks:active"  # set of ids not yet terminal


def idempotency_key(key: str) -> str:
    return f"{keys.PREFIX}:idempotency:{key}"


class TaskStore:
    def __init__(self, client: redis.Redis) -> None:
        self.redis = client
        self._locks: defaultdict[str, threading.RLock] = defaultdict(threading.RLock)
        self._locks_guard = threading.Lock()

    @contextmanager
    def _lock(self, task_id: str) -> Iterator[None]:
        with self._locks_guard:
            lock = self._locks[task_id]
        with lock:
            yield

    def create(self, record: TaskRecord, idempotency: str | None = None) -> TaskRecord:
        """Store a new record; with an idempotency key, return the task it already names."""
        if idempotency is not None:
            claimed = self.redis.set(
                idempotency_key(idempotency), record.id, nx=True, ex=7 * 86_400
            )
            if not claimed:
                existing_id = cast("str | None", self.redis.get(idempotency_key(idempotency)))
                existing = self.get(existing_id) if existing_id else None
                if existing is not None:
                    return existing
        pipe = self.redis.pipeline()
        pipe.set(keys.task(record.id), record.model_dump_json())
        pipe.zadd(keys.TASK_INDEX, {record.id: record.created_at})
        pipe.sadd(ACTIVE, record.id)
        pipe.execute()
        return record

    def get(self, task_id: str) -> TaskRecord | None:
        raw = cast("str | None", self.redis.get(keys.task(task_id)))
        return TaskRecord.model_validate_json(raw) if raw else None

    def save(self, record: TaskRecord) -> None:
        record.updated_at = time.time()
        pipe = self.redis.pipeline()
        pipe.set(keys.task(record.id), record.model_dump_json())
        if record.status.terminal:
            pipe.srem(ACTIVE, record.id)
        pipe.execute()

    def update(self, task_id: str, change: Callable[[TaskRecord], Any]) -> TaskRecord:
        with self._lock(task_id):
            record = self.get(task_id)
            if record is None:
                msg = f"unknown task {task_id}"
                raise KeyError(msg)
            change(record)
            self.save(record)
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

    def active_ids(self) -> list[str]:
        return sorted(cast("set[str]", self.redis.smembers(ACTIVE)))

    # -- checkpoints ------------------------------------------------------------------
    def save_checkpoint(self, task_id: str, payload: str) -> None:
        self.redis.set(keys.checkpoint(task_id), payload, ex=7 * 86_400)

    def load_checkpoint(self, task_id: str) -> str | None:
        return cast("str | None", self.redis.get(keys.checkpoint(task_id)))
