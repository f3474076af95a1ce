"""A worker on agentmesh's dispatch path whose subtask body does nothing.

It uses the real Celery app factory, the real result publication and the planner's
real wait, so ``make bench`` can compare that path with raw Celery.
"""

from __future__ import annotations

import time
from typing import Any

from agentmesh_shared import keys
from agentmesh_shared.celery_app import create_celery_app
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
    app.send_task(NAME, args=[subtask_id], queue=QUEUE)
    while client.get(keys.subtask_result(subtask_id)) is None:
        client.blpop([keys.subtask_done(subtask_id)], timeout=5)


_app_cache: dict[str, Any] = {}
_redis_cache: dict[str, Any] = {}


def main() -> None:
    settings = load_settings()
    app = create_celery_app(settings)
    client = connect(settings)

    @app.task(name=NAME)
    def noop(subtask_id: str) -> None:
        now = time.time()
        result = SubtaskResult(
            task_id="bench",
            subtask_id=subtask_id,
            role=Role.CODER,
            status="succeeded",
            worker="bench",
            started_at=now,
            finished_at=now,
        )
        pipe = client.pipeline()
        pipe.set(keys.subtask_result(subtask_id), result.model_dump_json(), nx=True, ex=600)
        pipe.lpush(keys.subtask_done(subtask_id), "1")
        pipe.execute()

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
