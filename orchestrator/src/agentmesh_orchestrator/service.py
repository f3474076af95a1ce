"""The orchestrator process's parts, wired once from settings."""

from __future__ import annotations

from dataclasses import dataclass

import redis
from agentmesh_shared.celery_app import create_celery_app
from agentmesh_shared.llm import make_client
from agentmesh_shared.redisconn import connect, connect_async
from agentmesh_shared.settings import Settings
from redis.asyncio import Redis as AsyncRedis

from agentmesh_orchestrator.planner import Planner
from agentmesh_orchestrator.store import TaskStore


@dataclass
class Services:
    settings: Settings
    redis: redis.Redis
    store: TaskStore
    planner: Planner
    # The API's long-polls wait on this one, in the server's event loop.
    aredis: AsyncRedis

    @classmethod
    def build(cls, settings: Settings) -> Services:
        client = connect(settings, max_connections=settings.planner_concurrency * 4 + 32)
        store = TaskStore(client)
        planner = Planner(
            settings=settings,
            redis=client,
            store=store,
            celery=create_celery_app(settings, name="agentmesh-orchestrator"),
            llm_factory=lambda: make_client(settings),
        )
        return cls(
            settings=settings,
            redis=client,
            store=store,
            planner=planner,
            aredis=connect_async(settings),
        )
