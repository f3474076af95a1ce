"""One way to open Redis: a pooled client sized to the caller's concurrency."""

from __future__ import annotations

import redis

from agentmesh_shared.settings import Settings


def connect(settings: Settings, *, max_connections: int = 64) -> redis.Redis:
    """A thread-safe client whose pool holds enough connections for every thread.

    redis-py caps a pool at 100 connections by default; a worker with more threads
    than that would block on the pool, so the size follows the concurrency.
    """
    pool = redis.BlockingConnectionPool.from_url(
        settings.redis_connection_url(),
        max_connections=max_connections,
        timeout=30,
        decode_responses=True,
        health_check_interval=30,
        socket_keepalive=True,
        socket_connect_timeout=5,
    )
    return redis.Redis(connection_pool=pool)
