"""Redis key names, in one place so every service agrees on them."""

PREFIX = "agentmesh"

TASK_INDEX = f"{PREFIX}:tasks"  # sorted set: task id -> created_at
DEAD_LETTER = f"{PREFIX}:deadletter"  # list of JSON entries: {reason, payload, at}
WORKER_INDEX = f"{PREFIX}:workers"  # hash: hostname -> WorkerInfo JSON


def task(task_id: str) -> str:
    return f"{PREFIX}:task:{task_id}"


def task_events(task_id: str) -> str:
    return f"{PREFIX}:task:{task_id}:events"


def checkpoint(task_id: str) -> str:
    return f"{PREFIX}:task:{task_id}:checkpoint"


def cancel_flag(task_id: str) -> str:
    return f"{PREFIX}:task:{task_id}:cancel"


def budget(task_id: str) -> str:
    return f"{PREFIX}:task:{task_id}:budget"


def subtask_result(subtask_id: str) -> str:
    return f"{PREFIX}:subtask:{subtask_id}:result"


def subtask_done(subtask_id: str) -> str:
    return f"{PREFIX}:subtask:{subtask_id}:done"


def subtask_started(subtask_id: str) -> str:
    return f"{PREFIX}:subtask:{subtask_id}:started"


def subtask_lease(subtask_id: str) -> str:
    return f"{PREFIX}:subtask:{subtask_id}:lease"
