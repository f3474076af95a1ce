"""Junk broker messages of every shape, as raw bytes for a kombu Redis queue (a list).

Each shape is something a confused or hostile producer could put on a queue; every
one of them must end on the dead-letter list exactly once, and none may stop a
worker. ``LPUSH <queue> <bytes>`` delivers one, as kombu itself does.
"""

from __future__ import annotations

import base64
import json
import pickle
import random
import uuid
from collections.abc import Callable

from agentmesh_shared.models import TASK_NAME_BY_ROLE

TASK_NAMES = list(TASK_NAME_BY_ROLE.values())


def envelope(
    queue: str,
    body: bytes,
    *,
    headers: object = None,
    content_type: str = "application/json",
    body_encoding: str = "base64",
    body_text: str | None = None,
) -> bytes:
    """A kombu Redis envelope around ``body`` (Celery protocol 2 headers by default)."""
    task_id = str(uuid.uuid4())
    if headers is None:
        headers = {"lang": "py", "task": TASK_NAMES[0], "id": task_id, "root_id": task_id}
    return json.dumps(
        {
            "body": body_text if body_text is not None else base64.b64encode(body).decode(),
            "content-encoding": "utf-8",
            "content-type": content_type,
            "headers": headers,
            "properties": {
                "correlation_id": task_id,
                "reply_to": "",
                "delivery_mode": 2,
                "delivery_info": {"exchange": queue, "routing_key": queue},
                "priority": 0,
                "body_encoding": body_encoding,
                "delivery_tag": str(uuid.uuid4()),
            },
        }
    ).encode()


def _task_headers(name: str) -> dict[str, object]:
    task_id = str(uuid.uuid4())
    return {"lang": "py", "task": name, "id": task_id, "root_id": task_id, "parent_id": None}


def _random_json(rng: random.Random, depth: int = 0) -> object:
    kind = rng.randrange(6 if depth < 3 else 4)
    if kind == 0:
        return None
    if kind == 1:
        return rng.randint(-(10**12), 10**12)
    if kind == 2:
        return rng.random()
    if kind == 3:
        return "".join(chr(rng.randrange(32, 0x2FF)) for _ in range(rng.randrange(20)))
    if kind == 4:
        return [_random_json(rng, depth + 1) for _ in range(rng.randrange(4))]
    return {f"k{rng.randrange(100)}": _random_json(rng, depth + 1) for _ in range(rng.randrange(4))}


def random_text(rng: random.Random, queue: str) -> bytes:
    return "".join(chr(rng.randrange(32, 127)) for _ in range(rng.randrange(1, 200))).encode()


def random_bytes(rng: random.Random, queue: str) -> bytes:
    return b"\xff" + rng.randbytes(rng.randrange(1, 300))


def json_without_envelope(rng: random.Random, queue: str) -> bytes:
    value = _random_json(rng)
    if isinstance(value, dict):
        value.pop("properties", None)
    return json.dumps({"task": TASK_NAMES[0], "payload": value}).encode()


def json_not_an_object(rng: random.Random, queue: str) -> bytes:
    return json.dumps([_random_json(rng), rng.random()]).encode()


def broken_properties(rng: random.Random, queue: str) -> bytes:
    raw = json.loads(envelope(queue, b"[[], {}, {}]"))
    raw["properties"] = rng.choice(["x", 7, None, [], {"delivery_info": {}}])
    return json.dumps(raw).encode()


def undecodable_body(rng: random.Random, queue: str) -> bytes:
    return envelope(queue, b"", body_text="!!not base64 at all" + str(rng.random()))


def non_json_body(rng: random.Random, queue: str) -> bytes:
    return envelope(queue, b"\x00\xffnot json" + rng.randbytes(8))


def unknown_task(rng: random.Random, queue: str) -> bytes:
    name = f"agentmesh.no_such_task_{rng.randrange(1000)}"
    return envelope(queue, b"[[], {}, {}]", headers=_task_headers(name))


def invalid_payload(rng: random.Random, queue: str) -> bytes:
    payload = [[_random_json(rng)], {}, {"callbacks": None, "errbacks": None, "chain": None}]
    name = TASK_NAMES[0] if queue == "research" else TASK_NAMES[1]
    return envelope(queue, json.dumps(payload).encode(), headers=_task_headers(name))


def pickle_body(rng: random.Random, queue: str) -> bytes:
    body = pickle.dumps(([], {}, {}))
    return envelope(
        queue,
        body,
        headers=_task_headers(TASK_NAMES[0]),
        content_type="application/x-python-serialize",
    )


def headers_not_an_object(rng: random.Random, queue: str) -> bytes:
    return envelope(queue, b"[[], {}, {}]", headers=["task", TASK_NAMES[0]])


SHAPES: dict[str, Callable[[random.Random, str], bytes]] = {
    "random text": random_text,
    "random bytes": random_bytes,
    "JSON without envelope": json_without_envelope,
    "JSON not an object": json_not_an_object,
    "broken properties": broken_properties,
    "body not base64": undecodable_body,
    "body not JSON": non_json_body,
    "unknown task name": unknown_task,
    "invalid payload": invalid_payload,
    "pickle body": pickle_body,
    "headers not an object": headers_not_an_object,
}


def messages(count: int, queues: list[str], seed: int = 12) -> list[tuple[str, str, bytes]]:
    """``count`` junk messages, (shape, queue, bytes), cycling through shapes and queues."""
    rng = random.Random(seed)
    names = list(SHAPES)
    out = []
    for i in range(count):
        shape = names[i % len(names)]
        queue = queues[(i // len(names)) % len(queues)]
        out.append((shape, queue, SHAPES[shape](rng, queue)))
    return out


# Run inside a mesh container that holds the Redis credentials (``python -c PUSHER``):
# reads "queue<TAB>base64" lines from stdin and LPUSHes the raw bytes, in batches,
# waiting before each batch until the queue holds fewer than 200 messages, so junk
# arrives as a steady stream rather than one deep backlog. Prints how many it pushed.
PUSHER = """
import base64, sys, time
import redis
from agentmesh_shared.settings import load_settings
r = redis.Redis.from_url(load_settings().redis_connection_url())
pushed, batch = 0, []
def flush():
    global pushed, batch
    for queue in {q for q, _ in batch}:
        while r.llen(queue) >= 200:
            time.sleep(0.05)
    pipe = r.pipeline(transaction=False)
    for queue, raw in batch:
        pipe.lpush(queue, raw)
    pipe.execute()
    pushed += len(batch)
    batch = []
for line in sys.stdin:
    queue, _, data = line.rstrip("\\n").partition("\\t")
    batch.append((queue, base64.b64decode(data)))
    if len(batch) >= 100:
        flush()
if batch:
    flush()
print(pushed)
"""


def pusher_input(sent: list[tuple[str, str, bytes]]) -> str:
    return "".join(f"{queue}\t{base64.b64encode(raw).decode()}\n" for _shape, queue, raw in sent)
