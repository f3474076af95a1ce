"""A worker on agentmesh's dispatch path whose subtask body does nothing.

It uses the real Celery app factory and the real hand-off (result publication that
wakes the task), and the round trip ends the way a planner replica sees a result: its
doorbell rings, it claims the task on the planning schedule, reads the result and
releases the task. So ``make bench`` compares that whole path with raw Celery.
"""

from __future__ import annotations

import time
from typing import Any

from agentmesh_orchestrator.schedule import PlanSchedule
from agentmesh_shared import keys
from agentmesh_shared.celery_app import create_celery_app
from agentmesh_shared.handoff import Handoff
from agentmesh_shared.health import beat
from agentmesh_shared.models import Role, SubtaskResult
from agentmesh_shared.redisconn import connect
from agentmesh_shared.settings import load_settings

QUEUE = "code"
NAME = "agentmesh.bench.noop"


def round_trip(redis_url: str, subtask_id: str) -> None:
    settings = load_settings(redis_url=redis_url)
    app = _app_cache.get(redis_url) or _app_cache.setdefault(redis_url, create_celery_app(settings))
    client = _redis_cache.get(redis_url) or _redis_cache.setdefault(redis_url, connect(settings))
    schedule = PlanSchedule(client, "bench-planner", lease_ttl_s=15)
    handoff = Handoff(client)
    task_id = f"task-{subtask_id}"
    client.zadd(keys.PLAN_DUE, {task_id: time.time() + 600})  # a task waiting on its subtask
    app.send_task(NAME, args=[subtask_id], queue=QUEUE)
    while True:
        claim = schedule.claim(task_id)
        if claim is not None:
            if handoff.snapshot([subtask_id])[subtask_id].result is not None:
                schedule.release(task_id, None)
                return
            schedule.release(task_id, time.time() + 600)
        schedule.wait_for_work(1)


_app_cache: dict[str, Any] = {}
_redis_cache: dict[str, Any] = {}


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
        handoff.publish(result)

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
