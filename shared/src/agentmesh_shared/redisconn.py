"""One way to open Redis: a pooled client sized to the caller's concurrency.

Commands are retried with exponential backoff on connection errors for about half a
minute, so a Redis restart (AOF keeps the data) is ridden out instead of failing
every task that touched Redis while it was down.

The socket timeout is explicit and longer than any blocking command we send
(:data:`MAX_BLOCK_S` plus a margin). redis-py 8 defaults it to 5 s: an
``XREAD BLOCK 5000`` then timed out on the client just before Redis answered, and
the retry policy (which retries timeouts, as it must for a restarting Redis) sent
the same 5 s block again on a fresh connection, so a long-poll of ``wait=5``
answered after 10, 20 or 47 s, or not at all. Every blocking call must therefore
block for at most ``MAX_BLOCK_S``.
"""

from __future__ import annotations

import redis
import redis.asyncio
from redis.asyncio.retry import Retry as AsyncRetry
from redis.backoff import ExponentialBackoff
from redis.exceptions import BusyLoadingError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from redis.retry import Retry

from agentmesh_shared.settings import Settings

RETRIES = 25  # with the backoff below: ~30 s in all
MAX_BLOCK_S = 30.0  # the longest BLPOP/XREAD block any caller may ask for
SOCKET_TIMEOUT_S = MAX_BLOCK_S + 10.0


REDIS_ERRORS = (RedisConnectionError, RedisTimeoutError, BusyLoadingError)


def _pool_options(max_connections: int) -> dict[str, object]:
    """What the sync and the asyncio pools share (their retry classes differ)."""
    return {
        "max_connections": max_connections,
        "timeout": 30,
        "decode_responses": True,
        "health_check_interval": 30,
        "socket_keepalive": True,
        "socket_connect_timeout": 5,
        "socket_timeout": SOCKET_TIMEOUT_S,
    }


def _backoff() -> ExponentialBackoff:
    return ExponentialBackoff(cap=2.0, base=0.05)


def connect(settings: Settings, *, max_connections: int = 64) -> redis.Redis:
    """A thread-safe client whose pool holds enough connections for every thread.

    redis-py caps a pool at 100 connections by default; a worker with more threads
    than that would block on the pool, so the size follows the concurrency.
    """
    pool = redis.BlockingConnectionPool.from_url(
        settings.redis_connection_url(),
        retry=Retry(_backoff(), RETRIES, supported_errors=(*REDIS_ERRORS, TimeoutError)),
        **_pool_options(max_connections),
    )
    return redis.Redis(connection_pool=pool)


def connect_async(settings: Settings, *, max_connections: int = 1000) -> redis.asyncio.Redis:
    """An asyncio client (one event loop): a waiting long-poll costs a coroutine, not a thread."""
    pool = redis.asyncio.BlockingConnectionPool.from_url(
        settings.redis_connection_url(),
        retry=AsyncRetry(_backoff(), RETRIES, supported_errors=REDIS_ERRORS),
        **_pool_options(max_connections),
    )
    return redis.asyncio.Redis(connection_pool=pool)
