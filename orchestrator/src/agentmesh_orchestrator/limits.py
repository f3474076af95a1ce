"""Flood limits at the API: per-credential rate and concurrency, Redis memory watched.

Every request but the health probes counts against its credential (see
:func:`credential_key`): a token bucket (``AGENTMESH_API_RATE_PER_S`` sustained,
``AGENTMESH_API_BURST`` at once) and a cap on requests in flight
(``AGENTMESH_API_CONCURRENCY``, long-polls included). Both live in Redis, updated by
one Lua script per request, so every orchestrator replica enforces the same limit;
an in-flight entry carries its own expiry, so a replica that dies mid-request leaks
nothing. Over a limit the answer is 429 with ``Retry-After`` and a sentence.

Redis's memory is watched against its ``maxmemory``: above
``AGENTMESH_REDIS_MEMORY_HIGH_WATER`` of it, ``/readyz`` degrades and new tasks are
refused with a sentence, so the work already accepted can still write its results.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, cast

import redis
from agentmesh_shared import keys
from agentmesh_shared.redisconn import MAX_BLOCK_S
from agentmesh_shared.settings import Settings
from redis.asyncio import Redis as AsyncRedis
from starlette.types import ASGIApp, Receive, Scope, Send

from agentmesh_orchestrator.client import LIMIT_HEADER

log = logging.getLogger("agentmesh.limits")
EXEMPT_PATHS = frozenset({"/healthz", "/readyz"})
# An in-flight entry outlives the longest request (a long-poll) by this much.
IN_FLIGHT_LEASE_S = MAX_BLOCK_S + 30.0


def credential_key(scope: Scope) -> str:
    """Who a request counts against: the credential the API token check verified
    (:mod:`agentmesh_orchestrator.auth` runs first and names it), else the client
    address (the open probes)."""
    identity = scope.get("state", {}).get("identity")
    if isinstance(identity, str):
        return identity
    client = scope.get("client")
    return "addr:" + (client[0] if client else "unknown")


# KEYS: the bucket (hash), the in-flight set (zset).
# ARGV: rate per s, burst, max in flight, request id, lease s.
# Returns {1, 0} admitted; {0, retry_after_ms} over the rate; {-1, retry_after_ms} too
# many in flight. Time is Redis's own, so replicas with skewed clocks agree.
_ADMIT = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local rate, burst = tonumber(ARGV[1]), tonumber(ARGV[2])
local max_in_flight, lease = tonumber(ARGV[3]), tonumber(ARGV[5])
local b = redis.call('HMGET', KEYS[1], 'tokens', 'ts')
local tokens = tonumber(b[1]) or burst
local ts = tonumber(b[2]) or now
tokens = math.min(burst, tokens + math.max(0, now - ts) * rate)
if tokens < 1 then
  return {0, math.ceil((1 - tokens) / rate * 1000)}
end
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now)
if redis.call('ZCARD', KEYS[2]) >= max_in_flight then
  return {-1, 1000}
end
redis.call('HSET', KEYS[1], 'tokens', tokens - 1, 'ts', now)
redis.call('EXPIRE', KEYS[1], math.ceil(burst / rate) + 1)
redis.call('ZADD', KEYS[2], now + lease, ARGV[4])
redis.call('EXPIRE', KEYS[2], math.ceil(lease) + 1)
return {1, 0}
"""


class FloodGuard:
    """ASGI middleware: admit a request against its credential's limits, or answer 429."""

    def __init__(self, app: ASGIApp, settings: Settings, client: AsyncRedis) -> None:
        self.app = app
        self.settings = settings
        self.redis = client
        self._admit = client.register_script(_ADMIT)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope.get("path") in EXEMPT_PATHS:
            await self.app(scope, receive, send)
            return
        who = credential_key(scope)
        bucket, in_flight = f"{keys.PREFIX}:limit:{who}:rate", f"{keys.PREFIX}:limit:{who}:inflight"
        request_id = uuid.uuid4().hex
        s = self.settings
        try:
            verdict, retry_ms = cast(
                "list[int]",
                await self._admit(
                    keys=[bucket, in_flight],
                    args=[
                        s.api_rate_per_s,
                        s.api_burst,
                        s.api_concurrency,
                        request_id,
                        IN_FLIGHT_LEASE_S,
                    ],
                ),
            )
        except redis.RedisError as err:
            # Redis down: the request's own Redis calls will say so clearly; the
            # limiter does not turn an outage into a 500 of its own.
            log.warning("flood limits not checked (Redis: %s)", type(err).__name__)
            await self.app(scope, receive, send)
            return
        if verdict != 1:
            retry_after = max(1, -(-int(retry_ms) // 1000))
            if verdict == 0:
                detail = (
                    f"too many requests: over {s.api_rate_per_s:g} a second (burst "
                    f"{s.api_burst}) for this client (AGENTMESH_API_RATE_PER_S, "
                    f"AGENTMESH_API_BURST); retry after {retry_after}s"
                )
            else:
                detail = (
                    f"too many requests in flight: {s.api_concurrency} at once for this client "
                    f"(AGENTMESH_API_CONCURRENCY); retry after {retry_after}s"
                )
            await _send_json(
                send,
                429,
                {"detail": detail},
                {
                    "retry-after": str(retry_after),
                    LIMIT_HEADER: "rate" if verdict == 0 else "in-flight",
                },
            )
            return
        try:
            await self.app(scope, receive, send)
        finally:
            try:
                await self.redis.zrem(in_flight, request_id)
            except redis.RedisError:
                log.warning("could not release an in-flight slot; it expires by itself")


async def _send_json(
    send: Send, status: int, body: dict[str, Any], headers: dict[str, str]
) -> None:
    payload = json.dumps(body).encode()
    raw_headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(payload)).encode()),
        *((k.encode(), v.encode()) for k, v in headers.items()),
    ]
    await send({"type": "http.response.start", "status": status, "headers": raw_headers})
    await send({"type": "http.response.body", "body": payload})


@dataclass
class MemoryWatch:
    """Redis's memory against its maxmemory, read at most once a second."""

    client: redis.Redis
    high_water: float
    _checked_at: float = 0.0
    _state: tuple[bool, str] = (True, "not checked yet")
    _cache_s: float = field(default=1.0)

    def check(self) -> tuple[bool, str]:
        """(below the high water, a sentence saying where memory stands)."""
        now = time.monotonic()
        if now - self._checked_at >= self._cache_s:
            self._state = self._read()
            self._checked_at = now
        return self._state

    def _read(self) -> tuple[bool, str]:
        info = self.client.info("memory")
        used, limit = int(info.get("used_memory", 0)), int(info.get("maxmemory", 0))
        if limit <= 0:
            return True, f"{used / 2**20:.0f} MiB used; no maxmemory set, so not bounded"
        share = used / limit
        sentence = (
            f"{used / 2**20:.0f} MiB of {limit / 2**20:.0f} MiB maxmemory used ({share:.0%}; "
            f"new tasks are refused above {self.high_water:.0%}, AGENTMESH_REDIS_MEMORY_HIGH_WATER)"
        )
        return share < self.high_water, sentence
