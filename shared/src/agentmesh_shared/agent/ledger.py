"""What an agent loop reads and writes about its task around each model call.

Before a call a loop must know that its task is not cancelled and that the task's
token budget is not spent; after it, the tokens are charged to the budget, the step
goes to the task's events, and a cancellation that arrived meanwhile must stop the
loop before it runs the call's tools. Each of those was a round trip of its own (two
of them Lua scripts), five a call. A :class:`TaskLedger` sends the reads before a
call as one pipeline and the writes after it, with the cancel read, as another: two
round trips a call. (No transaction is needed: each command is atomic on its own,
and the budget's limit is checked before a call, as it always was, not enforced
between concurrent calls of one task.)
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import redis

from agentmesh_shared import events, keys
from agentmesh_shared.budget import BudgetExceededError, TokenBudget

if TYPE_CHECKING:
    from agentmesh_shared.agent.loop import StepRecord


class TaskLedger:
    """The cancel flag, the token budget and the event stream of one task.

    ``step_event`` turns a finished model call into the task's event for it (an
    entry made by :func:`events.encode`), or None for no event.
    """

    def __init__(
        self,
        client: redis.Redis,
        task_id: str,
        step_event: Callable[[StepRecord], str | None] | None = None,
    ) -> None:
        self.redis = client
        self.task_id = task_id
        self.budget = TokenBudget(client)
        self.step_event = step_event

    def cancelled(self) -> bool:
        return bool(self.redis.exists(keys.cancel_flag(self.task_id)))

    def before_call(self) -> tuple[bool, BudgetExceededError | None]:
        """Whether the task is cancelled, and why its budget is spent (None if it is
        not), for the loop to judge in its own order. One round trip."""
        pipe = self.redis.pipeline(transaction=False)
        pipe.exists(keys.cancel_flag(self.task_id))
        self.budget.queue_check(pipe, self.task_id)
        cancelled, budget = pipe.execute()
        try:
            self.budget.raise_if_spent(self.task_id, budget)
        except BudgetExceededError as err:
            return bool(cancelled), err
        return bool(cancelled), None

    def after_call(self, step: StepRecord) -> bool:
        """Charge the call's tokens and append its event; whether the task is
        cancelled now. One round trip."""
        pipe = self.redis.pipeline(transaction=False)
        pipe.hincrby(keys.budget(self.task_id), "used", max(step.usage.total, 0))
        entry = self.step_event(step) if self.step_event is not None else None
        if entry is not None:
            pipe.xadd(
                keys.task_events(self.task_id),
                {"event": entry},
                maxlen=events.MAX_EVENTS,
                approximate=True,
            )
        pipe.exists(keys.cancel_flag(self.task_id))
        return bool(pipe.execute()[-1])
