"""The subtask hand-off between the planner and the workers: the one owner of its state.

A worker marks a subtask started, renews a lease on it while its loop runs, and
publishes its result (first result wins, so a subtask that ran twice is reported
once). A result wakes the task's planner: the task is put back on the planning
schedule (:data:`keys.PLAN_DUE`), so the step that waits for this result runs on
whichever planner replica claims it. A start wakes nobody: nothing in the task
moves until a result, and a planning step per start was as many steps again as
the task needs (the planner sees the start at its next look, a reader at once:
:meth:`Handoff.starts`). The planner reads the state of all of a step's subtasks in
one round trip (:meth:`Handoff.snapshot`) and forgets a start when it sends a
subtask again after its lease lapsed.

Key names and the time results are kept live here and nowhere else.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, cast

from agentmesh_shared import keys
from agentmesh_shared.models import SubtaskResult

if TYPE_CHECKING:
    import redis

RESULT_TTL_S = keys.RETENTION_S
DOORBELL_MAX = 64


def result_key(subtask_id: str) -> str:
    return f"{keys.PREFIX}:subtask:{subtask_id}:result"


def started_key(subtask_id: str) -> str:
    return f"{keys.PREFIX}:subtask:{subtask_id}:started"


def lease_key(subtask_id: str) -> str:
    return f"{keys.PREFIX}:subtask:{subtask_id}:lease"


# Every key of one subtask's hand-off (what expiring a task deletes).
SUBTASK_KEYS = (result_key, started_key, lease_key)


@dataclass(frozen=True)
class Started:
    worker: str
    at: float


@dataclass(frozen=True)
class SubtaskView:
    """What the planner sees of one subtask: a result, or whether a live worker holds it."""

    result: SubtaskResult | None
    started: Started | None
    leased: bool


def _started(raw: object) -> Started | None:
    if raw is None:
        return None
    data = json.loads(cast("str", raw))
    return Started(worker=str(data["worker"]), at=float(data["at"]))


def wake_task(pipe: redis.client.Pipeline, task_id: str, at: float | None = None) -> None:
    """Queue a planning step of ``task_id`` (never later than already planned) and ring."""
    pipe.zadd(keys.PLAN_DUE, {task_id: time.time() if at is None else at}, lt=True)
    pipe.lpush(keys.PLAN_DOORBELL, "1")
    pipe.ltrim(keys.PLAN_DOORBELL, 0, DOORBELL_MAX - 1)


@dataclass
class Handoff:
    redis: redis.Redis

    # -- the worker's side ------------------------------------------------------------
    def mark_started(self, subtask_id: str, worker: str, lease_ttl_s: float) -> None:
        pipe = self.redis.pipeline()
        pipe.set(
            started_key(subtask_id),
            json.dumps({"worker": worker, "at": time.time()}),
            ex=RESULT_TTL_S,
        )
        pipe.set(lease_key(subtask_id), worker, px=int(lease_ttl_s * 1000))
        pipe.execute()

    def renew(self, subtask_ids: Iterable[str], worker: str, lease_ttl_s: float) -> None:
        pipe = self.redis.pipeline()
        for subtask_id in subtask_ids:
            pipe.set(lease_key(subtask_id), worker, px=int(lease_ttl_s * 1000))
        pipe.execute()

    def has_result(self, subtask_id: str) -> bool:
        return bool(self.redis.exists(result_key(subtask_id)))

    def publish(self, result: SubtaskResult) -> bool:
        """Store the result unless one is there already; wake the task either way."""
        pipe = self.redis.pipeline()
        pipe.set(result_key(result.subtask_id), result.model_dump_json(), nx=True, ex=RESULT_TTL_S)
        pipe.delete(lease_key(result.subtask_id))
        wake_task(pipe, result.task_id)
        stored = pipe.execute()[0]
        return bool(stored)

    def wake(self, task_id: str) -> None:
        """Wake the task without a new result (a redelivery found one already there)."""
        pipe = self.redis.pipeline()
        wake_task(pipe, task_id)
        pipe.execute()

    # -- the planner's side -----------------------------------------------------------
    def snapshot(self, subtask_ids: Sequence[str]) -> dict[str, SubtaskView]:
        pipe = self.redis.pipeline(transaction=False)
        for subtask_id in subtask_ids:
            pipe.get(result_key(subtask_id))
            pipe.get(started_key(subtask_id))
            pipe.exists(lease_key(subtask_id))
        raw = pipe.execute()
        views: dict[str, SubtaskView] = {}
        for i, subtask_id in enumerate(subtask_ids):
            result_raw, started_raw, leased = raw[3 * i : 3 * i + 3]
            views[subtask_id] = SubtaskView(
                result=SubtaskResult.model_validate_json(result_raw) if result_raw else None,
                started=_started(started_raw),
                leased=bool(leased),
            )
        return views

    def starts(self, subtask_ids: Sequence[str]) -> dict[str, Started]:
        """The starts workers recorded for these subtasks, in one round trip (what a
        reader shows as running before the planner's next look records it)."""
        if not subtask_ids:
            return {}
        raws = cast("list[str | None]", self.redis.mget([started_key(s) for s in subtask_ids]))
        found = {s: _started(raw) for s, raw in zip(subtask_ids, raws, strict=True)}
        return {s: started for s, started in found.items() if started is not None}

    def forget_start(self, subtask_id: str) -> None:
        """Before a resend: the next start belongs to the new delivery."""
        self.redis.delete(started_key(subtask_id))
