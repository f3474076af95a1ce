"""The token budget of one task, shared by every worker on every replica.

The budget lives in Redis and is updated with Lua scripts so that concurrent
subtasks on different hosts see one consistent figure. Each LLM call is checked
before it starts: once the budget is spent no further call begins.
"""

from __future__ import annotations

from typing import cast

import redis

from agentmesh_shared import keys


class BudgetExceededError(RuntimeError):
    def __init__(self, task_id: str, used: int, limit: int) -> None:
        super().__init__(f"token budget exhausted: {used} of {limit} tokens used")
        self.task_id = task_id
        self.used = used
        self.limit = limit


_CHECK = """
local limit = tonumber(redis.call('HGET', KEYS[1], 'limit'))
local used = tonumber(redis.call('HGET', KEYS[1], 'used') or '0')
if limit == nil then return {-1, used} end
return {limit, used}
"""

_CONSUME = """
redis.call('HINCRBY', KEYS[1], 'used', ARGV[1])
local limit = tonumber(redis.call('HGET', KEYS[1], 'limit'))
local used = tonumber(redis.call('HGET', KEYS[1], 'used'))
if limit == nil then return {-1, used} end
return {limit, used}
"""


class TokenBudget:
    def __init__(self, client: redis.Redis) -> None:
        self._redis = client
        self._check = client.register_script(_CHECK)
        self._consume = client.register_script(_CONSUME)

    def open(self, task_id: str, limit: int, ttl_s: int) -> None:
        """Create the budget if it does not exist yet (a resumed task keeps its spend)."""
        key = keys.budget(task_id)
        pipe = self._redis.pipeline()
        pipe.hsetnx(key, "limit", limit)
        pipe.hsetnx(key, "used", 0)
        pipe.expire(key, ttl_s)
        pipe.execute()

    def ensure_available(self, task_id: str) -> int:
        """Raise if the task's budget is spent; return the tokens left."""
        limit, used = cast("list[int]", self._check(keys=[keys.budget(task_id)]))
        if limit < 0:
            return 2**31
        if used >= limit:
            raise BudgetExceededError(task_id, used, limit)
        return limit - used

    def consume(self, task_id: str, tokens: int) -> int:
        """Record tokens spent; return the total used so far."""
        _limit, used = cast(
            "list[int]", self._consume(keys=[keys.budget(task_id)], args=[max(tokens, 0)])
        )
        return used

    def used(self, task_id: str) -> int:
        value = self._redis.hget(keys.budget(task_id), "used")
        return int(cast("str", value)) if value is not None else 0
