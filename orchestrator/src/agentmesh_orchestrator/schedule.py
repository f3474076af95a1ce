"""The planning schedule: which task needs a planning step, and who is running it.

Every unfinished task has an entry in one sorted set (:data:`keys.PLAN_DUE`) scored
by when its next step is due. Any planner replica claims due tasks, those due
longest first, by taking their leases (``SET NX PX``), as many as it has room for in
one round trip; claiming also moves the entry one lease period ahead, so a
task whose replica dies mid-step falls due again as soon as the lease lapses, and
another replica takes it over from its checkpoint. The lease is renewed while the
step runs; releasing it sets the time of the task's next look (or removes a
finished task). A result arriving during a step moves the entry back to "now"
(``ZADD LT`` in the hand-off), and neither renewal nor release moves it forward
again, so no wake-up is lost.

Each script checks and changes the lease and the entry together, atomically.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, cast

import redis
from agentmesh_shared import keys

# KEYS: due; ARGV: owner, ttl ms, now, lease expiry (s), stepping marker ttl ms, how
# many to claim, how many due entries to look at, and the parts of a task's lease and
# stepping keys (keys.TASK_PREFIX, LEASE_SUFFIX, STEPPING_SUFFIX). Claims due
# tasks in the order they fell due, each by taking its lease (an entry whose lease
# another replica holds is passed over) and moving its entry one lease period ahead.
# Returns task id, then the replica that died inside its previous step ("" when there
# was none), for each task claimed.
_CLAIM_DUE = """
local claimed = {}
local ids = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[3], 'LIMIT', 0, tonumber(ARGV[7]))
for _, id in ipairs(ids) do
  if #claimed >= 2 * tonumber(ARGV[6]) then break end
  if redis.call('SET', ARGV[8] .. id .. ARGV[9], ARGV[1], 'NX', 'PX', ARGV[2]) then
    redis.call('ZADD', KEYS[1], 'XX', ARGV[4], id)
    local stepping = ARGV[8] .. id .. ARGV[10]
    table.insert(claimed, id)
    table.insert(claimed, redis.call('GET', stepping) or '')
    redis.call('SET', stepping, ARGV[1], 'PX', ARGV[5])
  end
end
return claimed
"""

# KEYS: due, lease; ARGV: task id, owner, ttl ms, now, lease expiry (s). 1 if still held.
_RENEW = """
if redis.call('GET', KEYS[2]) ~= ARGV[2] then return 0 end
redis.call('PEXPIRE', KEYS[2], ARGV[3])
local score = redis.call('ZSCORE', KEYS[1], ARGV[1])
if score and tonumber(score) > tonumber(ARGV[4]) then
  redis.call('ZADD', KEYS[1], 'XX', ARGV[5], ARGV[1])
end
return 1
"""

# KEYS: due, lease, stepping; ARGV: task id, owner, now, next (s, or "done").
_RELEASE = """
if redis.call('GET', KEYS[2]) ~= ARGV[2] then return 0 end
redis.call('DEL', KEYS[2], KEYS[3])
if ARGV[4] == 'done' then
  redis.call('ZREM', KEYS[1], ARGV[1])
  return 1
end
local score = redis.call('ZSCORE', KEYS[1], ARGV[1])
if not score or tonumber(score) > tonumber(ARGV[3]) then
  redis.call('ZADD', KEYS[1], ARGV[4], ARGV[1])
end
return 1
"""


@dataclass(frozen=True)
class Claim:
    task_id: str
    taken_over_from: str | None  # the replica that died inside this task's last step


class PlanSchedule:
    def __init__(self, client: redis.Redis, owner: str, lease_ttl_s: float) -> None:
        self.redis = client
        self.owner = owner
        self.lease_ttl_s = lease_ttl_s
        self._claim_due = client.register_script(_CLAIM_DUE)
        self._renew = client.register_script(_RENEW)
        self._release = client.register_script(_RELEASE)

    def _keys(self, task_id: str) -> list[str]:
        return [keys.PLAN_DUE, keys.task_lease(task_id), keys.task_stepping(task_id)]

    def claim_due(self, limit: int, look_at: int | None = None) -> list[Claim]:
        """Claim up to ``limit`` due tasks, those due longest first, in one round trip;
        of the due entries, the first ``look_at`` (default ``limit``) are tried."""
        if limit <= 0:
            return []
        now = time.time()
        flat = cast(
            "list[str]",
            self._claim_due(
                keys=[keys.PLAN_DUE],
                args=[
                    self.owner,
                    int(self.lease_ttl_s * 1000),
                    now,
                    now + self.lease_ttl_s,
                    keys.RETENTION_S * 1000,
                    limit,
                    max(limit, look_at or limit),
                    keys.TASK_PREFIX,
                    keys.LEASE_SUFFIX,
                    keys.STEPPING_SUFFIX,
                ],
            ),
        )
        return [
            Claim(task_id, previous if previous and previous != self.owner else None)
            for task_id, previous in zip(flat[::2], flat[1::2], strict=True)
        ]

    def renew(self, task_ids: list[str]) -> set[str]:
        """Extend the leases of the steps this replica runs; returns those still held."""
        if not task_ids:
            return set()
        now = time.time()
        ttl_ms = int(self.lease_ttl_s * 1000)
        pipe = self.redis.pipeline(transaction=False)
        for task_id in task_ids:
            self._renew(
                keys=self._keys(task_id)[:2],
                args=[task_id, self.owner, ttl_ms, now, now + self.lease_ttl_s],
                client=pipe,
            )
        held: list[Any] = pipe.execute()
        return {t for t, ok in zip(task_ids, held, strict=True) if ok}

    def held(self, task_id: str) -> bool:
        return self.redis.get(keys.task_lease(task_id)) == self.owner

    def release(self, task_id: str, next_at: float | None) -> bool:
        """End a step: the task is next looked at ``next_at``, or never (finished)."""
        return bool(
            self._release(
                keys=self._keys(task_id),
                args=[task_id, self.owner, time.time(), "done" if next_at is None else next_at],
            )
        )

    def enqueue(self, task_ids: list[str]) -> int:
        """Put tasks on the schedule unless they are there already (start-up adoption)."""
        if not task_ids:
            return 0
        added = self.redis.zadd(keys.PLAN_DUE, dict.fromkeys(task_ids, time.time()), nx=True)
        return cast("int", added)

    def wait_for_work(self, timeout_s: float) -> None:
        """Sleep until the doorbell rings (a task was woken) or ``timeout_s`` passes."""
        self.redis.blpop([keys.PLAN_DOORBELL], timeout=timeout_s)
