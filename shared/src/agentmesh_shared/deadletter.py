"""The dead-letter list: broker messages no worker could accept, with the reason.

Newest first, at most :data:`MAX_ENTRIES`; each entry keeps at most
:data:`MAX_PAYLOAD_CHARS` of the message (raw bytes that are not UTF-8 are kept as
base64 under ``payload_base64``). :data:`keys.DEAD_LETTER_TOTAL` counts every
message ever dead-lettered, so trimming never hides how many there were.
"""

from __future__ import annotations

import base64
import json
import logging
import time
from typing import Any, cast

import redis

from agentmesh_shared import keys

log = logging.getLogger("agentmesh.deadletter")
MAX_ENTRIES = 10_000
MAX_PAYLOAD_CHARS = 16_000


def _printable(payload: object) -> dict[str, object]:
    if isinstance(payload, bytes):
        raw = payload
        try:
            payload = raw.decode("utf-8")
        except UnicodeDecodeError:
            return {
                "payload_base64": base64.b64encode(raw[: MAX_PAYLOAD_CHARS * 3 // 4]).decode(),
                "payload_bytes": len(raw),
            }
    if isinstance(payload, str):
        if len(payload) > MAX_PAYLOAD_CHARS:
            return {"payload": payload[:MAX_PAYLOAD_CHARS] + "…", "payload_chars": len(payload)}
        return {"payload": payload}
    try:
        text = json.dumps(payload)
    except (TypeError, ValueError):
        return {"payload": repr(payload)[:MAX_PAYLOAD_CHARS]}
    if len(text) <= MAX_PAYLOAD_CHARS:
        return {"payload": payload}
    return {"payload": text[:MAX_PAYLOAD_CHARS] + "…", "payload_chars": len(text)}


def put(client: redis.Redis, reason: str, payload: object, **context: Any) -> None:
    entry = {"at": time.time(), "reason": reason, **_printable(payload), **context}
    log.error("message moved to the dead-letter list: %s", reason, extra={"dead_letter": context})
    pipe = client.pipeline()
    pipe.lpush(keys.DEAD_LETTER, json.dumps(entry, default=repr))
    pipe.ltrim(keys.DEAD_LETTER, 0, MAX_ENTRIES - 1)
    pipe.incr(keys.DEAD_LETTER_TOTAL)
    pipe.execute()


def entries(client: redis.Redis, limit: int = 100) -> list[dict[str, Any]]:
    """The newest ``limit`` entries, newest first; the list is left as it is."""
    raw = cast("list[str]", client.lrange(keys.DEAD_LETTER, 0, limit - 1))
    return [json.loads(item) for item in raw]


def drain(client: redis.Redis, limit: int = 100) -> list[dict[str, Any]]:
    """Remove and return the oldest ``limit`` entries, oldest first."""
    raw = cast("list[str] | None", client.rpop(keys.DEAD_LETTER, limit)) or []
    return [json.loads(item) for item in raw]


def total(client: redis.Redis) -> int:
    """How many messages were ever dead-lettered (trimming does not lower it)."""
    return int(cast("str | None", client.get(keys.DEAD_LETTER_TOTAL)) or 0)
