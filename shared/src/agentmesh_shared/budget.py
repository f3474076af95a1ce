"""The token budget of one task, shared by every worker on every replica.

The budget lives in a Redis hash (``limit`` and ``used``), charged with ``HINCRBY`` so
that concurrent subtasks on different hosts see one consistent figure. Each model
call is checked before it starts: once the budget is spent no further call begins.
An agent loop reads and charges it in the pipelines of its
:class:`~agentmesh_shared.agent.ledger.TaskLedger`.
"""

from __future__ import annotations

import redis

from agentmesh_shared import keys


class BudgetExceededError(RuntimeError):
    def __init__(self, task_id: str, used: int, limit: int) -> None:
        super().__init__(f"token budget exhausted: {used} of {limit} tokens used")
        self.task_id = task_id
        self.used = used
        self.limit = limit


class TokenBudget:
    def __init__(self, client: redis.Redis) -> None:
        self._redis = client

    def open(self, task_id: str, limit: int, ttl_s: int) -> None:
        """Create the budget if it does not exist yet (a resumed task keeps its spend)."""
        key = keys.budget(task_id)
        pipe = self._redis.pipeline()
        pipe.hsetnx(key, "limit", limit)
        pipe.hsetnx(key, "used", 0)
        pipe.expire(key, ttl_s)
        pipe.execute()

    def queue_check(self, pipe: redis.client.Pipeline, task_id: str) -> None:
        """Add the read :meth:`raise_if_spent` judges to ``pipe``."""
        pipe.hmget(keys.budget(task_id), "limit", "used")

    def raise_if_spent(self, task_id: str, reply: list[str | None]) -> int:
        """Raise if the budget read by :meth:`queue_check` is spent; return the tokens
        left (2**31 for a task without a budget)."""
        limit, used = reply
        if limit is None:
            return 2**31
        spent = int(used or 0)
        if spent >= int(limit):
            raise BudgetExceededError(task_id, spent, int(limit))
        return int(limit) - spent
