"""Redis key names, in one place so every service agrees on them."""

PREFIX = "agentmesh"

TASK_INDEX = f"{PREFIX}:tasks"  # sorted set: task id -> created_at
DEAD_LETTER = f"{PREFIX}:deadletter"  # list of JSON entries: {reason, payload, at}
DEAD_LETTER_TOTAL = f"{PREFIX}:deadletter:total"  # counter: messages ever dead-lettered
WORKER_INDEX = f"{PREFIX}:workers"  # hash: hostname -> WorkerInfo JSON
ACTIVE_TASKS = f"{PREFIX}:tasks:active"  # set of task ids not yet terminal
PLAN_DUE = f"{PREFIX}:plan:due"  # sorted set: task id -> when its next planning step is due
PLAN_DOORBELL = f"{PREFIX}:plan:doorbell"  # list: wakes an idle planner at once

# How long records, results, checkpoints and idempotency keys are kept.
RETENTION_S = 7 * 24 * 3600


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


# A task's planning keys, named in parts: the planning schedule's claim script builds
# them from these parts inside Redis.
TASK_PREFIX = f"{PREFIX}:task:"
LEASE_SUFFIX = ":lease"
STEPPING_SUFFIX = ":stepping"


def task_lease(task_id: str) -> str:
    """Held by the planner replica running the task's current step."""
    return f"{TASK_PREFIX}{task_id}{LEASE_SUFFIX}"


def task_stepping(task_id: str) -> str:
    """Names the replica inside a step; outlives a replica that died mid-step."""
    return f"{TASK_PREFIX}{task_id}{STEPPING_SUFFIX}"


def gateway_usage(role: str) -> str:
    """hash: calls, errors, input_tokens, output_tokens of one role's model calls."""
    return f"{PREFIX}:gateway:usage:{role}"


def gateway_task_usage(task_id: str) -> str:
    """hash: <role>.calls, <role>.input_tokens, ... of one task's model calls."""
    return f"{PREFIX}:gateway:task:{task_id}"
