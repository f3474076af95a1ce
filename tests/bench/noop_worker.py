"""A worker on agentmesh's dispatch path whose subtask body does nothing.

It uses the real Celery app factory and the real hand-off (result publication that
wakes the task), and the round trip ends the way a planner replica sees a result: its
doorbell rings, it claims the due task on the planning schedule (one round trip),
reads the result and releases the task. So ``make bench`` compares that whole path with raw Celery.
"""

from __future__ import annotations

import functools
import time
from dataclasses import dataclass
from typing import Any

from agentmesh_orchestrator.schedule import PlanSchedule
from agentmesh_shared import events, keys
from agentmesh_shared.celery_app import create_celery_app
from agentmesh_shared.handoff import Handoff
from agentmesh_shared.health import beat
from agentmesh_shared.models import Role, SubtaskResult
from agentmesh_shared.redisconn import connect
from agentmesh_shared.settings import load_settings

QUEUE = "code"
NAME = "agentmesh.bench.noop"


@dataclass
class _Planner:
    """What a planner replica holds for the life of its process."""

    app: Any
    client: Any
    schedule: PlanSchedule
    handoff: Handoff


@functools.cache
def _planner(redis_url: str) -> _Planner:
    settings = load_settings(redis_url=redis_url)
    client = connect(settings)
    return _Planner(
        create_celery_app(settings),
        client,
        PlanSchedule(client, "bench-planner", lease_ttl_s=15),
        Handoff(client),
    )


def round_trip(redis_url: str, subtask_id: str) -> None:
    p = _planner(redis_url)
    task_id = f"task-{subtask_id}"
    p.client.zadd(keys.PLAN_DUE, {task_id: time.time() + 600})  # a task waiting on its subtask
    p.app.send_task(NAME, args=[subtask_id], queue=QUEUE)
    # As an idle planner replica: sleep on the doorbell, claim what is due (only this
    # task is), read its subtask's result, end the step.
    while True:
        p.schedule.wait_for_work(1)
        if not [c for c in p.schedule.claim_due(8) if c.task_id == task_id]:
            continue
        if p.handoff.snapshot([subtask_id])[subtask_id].result is not None:
            p.schedule.release(task_id, None)
            return
        p.schedule.release(task_id, time.time() + 600)


def main() -> None:
    settings = load_settings()
    app = create_celery_app(settings, consumer=Role.CODER)
    handoff = Handoff(connect(settings))

    @app.task(name=NAME)
    def noop(subtask_id: str) -> None:
        now = time.time()
        result = SubtaskResult(
            task_id=f"task-{subtask_id}",
            subtask_id=subtask_id,
            role=Role.CODER,
            status="succeeded",
            worker="bench",
            started_at=now,
            finished_at=now,
        )
        handoff.publish(result, events.encode(result.task_id, "subtask.succeeded", "done"))

    beat(settings.heartbeat_file)
    app.worker_main(
        [
            "worker",
            "--pool=threads",
            "-c",
            "4",
            f"-Q{QUEUE}",
            "--without-gossip",
            "--without-mingle",
            "-l",
            "WARNING",
        ]
    )


if __name__ == "__main__":
    main()
