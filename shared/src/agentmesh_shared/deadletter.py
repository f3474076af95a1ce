"""The dead-letter list: broker messages no worker could accept, with the reason."""

from __future__ import annotations

import json
import logging
import time
from typing import Any, cast

import redis

from agentmesh_shared import keys

log = logging.getLogger("agentmesh.deadletter")
MAX_ENTRIES = 10_000
MAX_PAYLOAD_CHARS = 16_000


def _printable(payload: object) -> object:
    if isinstance(payload, bytes):
        payload = payload.decode("utf-8", errors="replace")
    if isinstance(payload, str) and len(payload) > MAX_PAYLOAD_CHARS:
        return payload[:MAX_PAYLOAD_CHARS] + "…"
    try:
        text = json.dumps(payload)
    except (TypeError, ValueError):
        return repr(payload)[:MAX_PAYLOAD_CHARS]
    return payload if len(text) <= MAX_PAYLOAD_CHARS else text[:MAX_PAYLOAD_CHARS] + "…"


def put(client: redis.Redis, reason: str, payload: object, **context: Any) -> None:
    entry = {"at": time.time(), "reason": reason, "payload": _printable(payload), **context}
    log.error("message moved to the dead-letter list: %s", reason, extra={"dead_letter": context})
    pipe = client.pipeline()
    pipe.lpush(keys.DEAD_LETTER, json.dumps(entry, default=repr))
    pipe.ltrim(keys.DEAD_LETTER, 0, MAX_ENTRIES - 1)
    pipe.execute()


def entries(client: redis.Redis, limit: int = 100) -> list[dict[str, Any]]:
    raw = cast("list[str]", client.lrange(keys.DEAD_LETTER, 0, limit - 1))
    return [json.loads(item) for item in raw]
