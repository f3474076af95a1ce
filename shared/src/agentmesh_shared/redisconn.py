"""One way to open Redis: a pooled client sized to the caller's concurrency.

Commands are retried with exponential backoff on connection errors for about half a
minute, so a Redis restart (AOF keeps the data) is ridden out instead of failing
every task that touched Redis while it was down.
"""

from __future__ import annotations

import redis
from redis.backoff import ExponentialBackoff
from redis.exceptions import BusyLoadingError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from redis.retry import Retry

from agentmesh_shared.settings import Settings

RETRIES = 25  # with the backoff below: ~30 s in all


def connect(settings: Settings, *, max_connections: int = 64) -> redis.Redis:
    """A thread-safe client whose pool holds enough connections for every thread.

    redis-py caps a pool at 100 connections by default; a worker with more threads
    than that would block on the pool, so the size follows the concurrency.
    """
    retry = Retry(
        ExponentialBackoff(cap=2.0, base=0.05),
        RETRIES,
        supported_errors=(RedisConnectionError, RedisTimeoutError, BusyLoadingError, TimeoutError),
    )
    pool = redis.BlockingConnectionPool.from_url(
        settings.redis_connection_url(),
        max_connections=max_connections,
        timeout=30,
        decode_responses=True,
        health_check_interval=30,
        socket_keepalive=True,
        socket_connect_timeout=5,
        retry=retry,
    )
    return redis.Redis(connection_pool=pool)
