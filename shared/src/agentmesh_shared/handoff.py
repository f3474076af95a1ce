"""The subtask hand-off between the planner and the workers: the one owner of its state.

A worker starts a subtask (one step: unless it has a result already, it is marked
started, leased and its "subtask.started" event appended), renews the lease while
its loop runs, and publishes its result (first result wins, so a subtask that ran
twice is reported once) with its "subtask.<status>" event, in one atomic step.

The result that completes a planning step wakes the task's planner: the task is put
back on the planning schedule (:data:`keys.PLAN_DUE`), so the step that waits for
the results runs on whichever planner replica claims it. A step that ends waiting
names the subtasks it still awaits (:meth:`Handoff.await_results`), and a result
wakes the task only when it is the last of them: a task of two subtasks takes one
planning step for both results, not one per result. Without such a list (a task
resumed from an older checkpoint, a duplicate result) every result wakes the task,
so no wake-up is ever lost; an extra step only finds nothing to do.

A start wakes nobody either: nothing in the task moves until its results are in (the
planner sees a start or an early result at its next look, a reader at once:
:meth:`Handoff.progress`). The planner reads the state of all of a step's subtasks
in one round trip (:meth:`Handoff.snapshot`) and forgets a start when it sends a
subtask again after its lease lapsed.

Key names and the time results are kept live here and nowhere else.
"""

from __future__ import annotations

import enum
import json
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

from agentmesh_shared import events, keys
from agentmesh_shared.models import SubtaskRecord, SubtaskResult, TaskRecord, TaskStatus

if TYPE_CHECKING:
    import redis

RESULT_TTL_S = keys.RETENTION_S
DOORBELL_MAX = 64

# The one definition of a wake-up, for every script that wakes a task (the task's
# admission too): put the task on the planning schedule at ``now`` unless it is due
# sooner already (``ZADD LT`` adds a missing entry), and ring the planners' doorbell,
# kept to its last ``keep`` rings.
WAKE_LUA = """
local function wake(due, doorbell, task_id, now, keep)
  redis.call('ZADD', due, 'LT', now, task_id)
  redis.call('LPUSH', doorbell, '1')
  redis.call('LTRIM', doorbell, 0, keep - 1)
end
"""

# KEYS: due, doorbell; ARGV: task id, now, doorbell length.
_WAKE = WAKE_LUA + "wake(KEYS[1], KEYS[2], ARGV[1], ARGV[2], tonumber(ARGV[3]))"

# KEYS: result, lease, awaited, events, due, doorbell; ARGV: result json, result ttl
# s, subtask id, task id, now, doorbell length, event, events kept. Stores the result
# unless one is there (returns 1 if stored), ends the lease, appends the event, and
# wakes the task unless the planner still awaits another of its subtasks.
_PUBLISH = (
    WAKE_LUA
    + """
local stored = redis.call('SET', KEYS[1], ARGV[1], 'NX', 'EX', ARGV[2])
redis.call('DEL', KEYS[2])
redis.call('XADD', KEYS[4], 'MAXLEN', '~', ARGV[8], '*', 'event', ARGV[7])
redis.call('SREM', KEYS[3], ARGV[3])
if redis.call('SCARD', KEYS[3]) == 0 then
  wake(KEYS[5], KEYS[6], ARGV[4], ARGV[5], tonumber(ARGV[6]))
end
if stored then return 1 end
return 0
"""
)

# KEYS: result, started, lease, events; ARGV: started json, ttl s, worker, lease ms,
# event, events kept. A subtask with a result is left alone ('done': a redelivery);
# else it is marked started and leased, and its event appended. (The task's cancel
# flag is not read here: a worker may only read it, and a script's keys are all
# writable to it. The loop's first model call reads it.)
_START = """
if redis.call('EXISTS', KEYS[1]) == 1 then return 'done' end
redis.call('SET', KEYS[2], ARGV[1], 'EX', ARGV[2])
redis.call('SET', KEYS[3], ARGV[3], 'PX', ARGV[4])
redis.call('XADD', KEYS[4], 'MAXLEN', '~', ARGV[6], '*', 'event', ARGV[5])
return 'started'
"""

# KEYS: awaited, due, doorbell, then the result key of each subtask; ARGV: task id,
# now, doorbell length, ttl s, then the subtask ids in KEYS' order. Replaces the list
# of awaited subtasks with those that have no result yet; when none is left (the
# last result arrived before this ran), wakes the task. Returns how many are awaited.
_AWAIT = (
    WAKE_LUA
    + """
redis.call('DEL', KEYS[1])
for i = 4, #KEYS do
  if redis.call('EXISTS', KEYS[i]) == 0 then redis.call('SADD', KEYS[1], ARGV[i + 1]) end
end
local left = redis.call('SCARD', KEYS[1])
if left == 0 then
  wake(KEYS[2], KEYS[3], ARGV[1], ARGV[2], tonumber(ARGV[3]))
else
  redis.call('EXPIRE', KEYS[1], ARGV[4])
end
return left
"""
)


def result_key(subtask_id: str) -> str:
    return f"{keys.PREFIX}:subtask:{subtask_id}:result"


def started_key(subtask_id: str) -> str:
    return f"{keys.PREFIX}:subtask:{subtask_id}:started"


def lease_key(subtask_id: str) -> str:
    return f"{keys.PREFIX}:subtask:{subtask_id}:lease"


def awaited_key(task_id: str) -> str:
    """set: the subtasks whose results a task's planner waits for before its next step."""
    return f"{keys.PREFIX}:task:{task_id}:awaited"


# Every key of one subtask's hand-off (what expiring a task deletes).
SUBTASK_KEYS = (result_key, started_key, lease_key)


class Start(enum.Enum):
    """What :meth:`Handoff.start` found."""

    STARTED = "started"
    DONE = "done"  # it has a result already (a redelivery): nothing was written


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


def result_fields(result: SubtaskResult) -> dict[str, Any]:
    """What a subtask's record takes from its result."""
    return {
        "status": TaskStatus(result.status),
        "worker": result.worker,
        "result": result.output or None,
        "error": result.error,
        "usage": result.usage,
        "steps": result.steps,
        "artifacts": result.artifacts,
        "started_at": result.started_at,
        "finished_at": result.finished_at,
    }


@dataclass
class Handoff:
    redis: redis.Redis

    def __post_init__(self) -> None:
        self._wake = self.redis.register_script(_WAKE)
        self._start = self.redis.register_script(_START)
        self._publish = self.redis.register_script(_PUBLISH)
        self._await = self.redis.register_script(_AWAIT)

    # -- the worker's side ------------------------------------------------------------
    def start(
        self, task_id: str, subtask_id: str, worker: str, lease_ttl_s: float, event: str
    ) -> Start:
        """Begin a subtask on ``worker``, in one round trip: unless it has a result,
        mark it started, lease it and append ``event`` (:func:`events.encode`)."""
        reply = self._start(
            keys=[
                result_key(subtask_id),
                started_key(subtask_id),
                lease_key(subtask_id),
                keys.task_events(task_id),
            ],
            args=[
                json.dumps({"worker": worker, "at": time.time()}),
                RESULT_TTL_S,
                worker,
                int(lease_ttl_s * 1000),
                event,
                events.MAX_EVENTS,
            ],
        )
        return Start(reply.decode() if isinstance(reply, bytes) else reply)

    def renew(self, subtask_ids: Iterable[str], worker: str, lease_ttl_s: float) -> None:
        pipe = self.redis.pipeline()
        for subtask_id in subtask_ids:
            pipe.set(lease_key(subtask_id), worker, px=int(lease_ttl_s * 1000))
        pipe.execute()

    def publish(self, result: SubtaskResult, event: str) -> bool:
        """Store the result unless one is there already, and append ``event`` (an
        entry made by :func:`events.encode`) to the task's events; wake the task unless its
        planner still awaits another subtask. True if this result was stored."""
        stored = self._publish(
            keys=[
                result_key(result.subtask_id),
                lease_key(result.subtask_id),
                awaited_key(result.task_id),
                keys.task_events(result.task_id),
                keys.PLAN_DUE,
                keys.PLAN_DOORBELL,
            ],
            args=[
                result.model_dump_json(),
                RESULT_TTL_S,
                result.subtask_id,
                result.task_id,
                time.time(),
                DOORBELL_MAX,
                event,
                events.MAX_EVENTS,
            ],
        )
        return bool(stored)

    def wake(self, task_id: str) -> None:
        """Wake the task without a new result (a redelivery found one already there,
        a cancellation)."""
        self._wake(
            keys=[keys.PLAN_DUE, keys.PLAN_DOORBELL], args=[task_id, time.time(), DOORBELL_MAX]
        )

    # -- the planner's side -----------------------------------------------------------
    def await_results(self, task_id: str, subtask_ids: Sequence[str]) -> int:
        """A step ends waiting for ``subtask_ids``: only the last of their results
        wakes the task (or this call wakes it, if they all arrived meanwhile).
        Returns how many are still awaited."""
        return int(
            cast(
                "int",
                self._await(
                    keys=[
                        awaited_key(task_id),
                        keys.PLAN_DUE,
                        keys.PLAN_DOORBELL,
                        *(result_key(s) for s in subtask_ids),
                    ],
                    args=[task_id, time.time(), DOORBELL_MAX, RESULT_TTL_S, *subtask_ids],
                ),
            )
        )

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

    # -- readers ----------------------------------------------------------------------
    def progress(self, records: Sequence[TaskRecord]) -> None:
        """Show in ``records`` what workers reported that the planner has not recorded
        yet (it records starts and results at the task's next step): a started
        subtask as running, a finished one with its result, and its usage in the
        task's. One round trip for all of them; finished tasks are left as they are."""
        open_: list[tuple[TaskRecord, SubtaskRecord]] = [
            (record, sub)
            for record in records
            if not record.status.terminal
            for sub in record.subtasks
            if not sub.status.terminal
        ]
        if not open_:
            return
        raws = cast(
            "list[str | None]",
            self.redis.mget([k(sub.id) for _, sub in open_ for k in (result_key, started_key)]),
        )
        for i, (record, sub) in enumerate(open_):
            result_raw, started_raw = raws[2 * i], raws[2 * i + 1]
            if result_raw:
                result = SubtaskResult.model_validate_json(result_raw)
                for name, value in result_fields(result).items():
                    setattr(sub, name, value)
                record.usage = record.usage + result.usage
                continue
            started = _started(started_raw)
            if started is not None and sub.status is TaskStatus.QUEUED:
                sub.status = TaskStatus.RUNNING
                sub.worker = started.worker
                sub.started_at = started.at

    def forget_start(self, subtask_id: str) -> None:
        """Before a resend: the next start belongs to the new delivery."""
        self.redis.delete(started_key(subtask_id))
