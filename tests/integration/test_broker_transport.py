"""The broker transport against a real redis-server: junk is dead-lettered, work flows.

Each test consumes with kombu itself (the code path Celery's consumer drives), once
with our transport and once with kombu's stock one, so the tests prove both the fix
and that the failure they guard against is real.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from agentmesh_shared import deadletter, keys
from kombu import Connection, Consumer, Exchange, Producer, Queue

from tests.support import junk
from tests.support.redis_server import redis_server

TRANSPORT = "agentmesh_shared.broker_transport:Transport"


@pytest.fixture(scope="module")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with redis_server(Path(tmp_path_factory.mktemp("redis"))) as client:
        yield f"redis://127.0.0.1:{client.connection_pool.connection_kwargs['port']}/0"


@pytest.fixture
def r(redis_url: str) -> redis.Redis:
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    client.flushdb()
    return client


def _consume(url: str, transport: str | None, queue: str, want: int) -> list[Any]:
    got: list[Any] = []
    q = Queue(queue, Exchange(queue, type="direct"), routing_key=queue)
    with (
        Connection(url, transport=transport) as conn,
        Consumer(
            conn,
            queues=[q],
            accept=["json"],
            callbacks=[lambda body, m: (got.append(body), m.ack())],
        ),
    ):
        give_up = time.monotonic() + 20
        while len(got) < want and time.monotonic() < give_up:
            try:
                conn.drain_events(timeout=1)
            except TimeoutError:
                continue
    return got


def _publish(url: str, queue: str, body: object) -> None:
    with Connection(url) as conn:
        exchange = Exchange(queue, type="direct")
        Producer(conn).publish(
            body,
            exchange=exchange,
            routing_key=queue,
            serializer="json",
            declare=[Queue(queue, exchange, routing_key=queue)],
        )


def test_every_junk_shape_is_dead_lettered_and_the_good_message_behind_it_arrives(
    redis_url: str, r: redis.Redis
) -> None:
    transport_shapes = {
        name for name in junk.SHAPES if name in {
            "random text", "random bytes", "JSON without envelope", "JSON not an object",
            "broken properties", "body not base64", "headers not an object",
        }
    }  # fmt: skip
    sent = [
        m for m in junk.messages(len(junk.SHAPES) * 4, ["research"]) if m[0] in transport_shapes
    ]
    for _shape, queue, raw in sent:
        r.lpush(queue, raw)
    _publish(redis_url, "research", {"real": "work"})

    got = _consume(redis_url, TRANSPORT, "research", want=1)

    assert got == [{"real": "work"}]
    assert deadletter.total(r) == len(sent)
    entries = deadletter.entries(r, limit=1000)
    assert len(entries) == len(sent)
    assert all(e["queue"] == "research" and e["stage"] == "transport" for e in entries)
    reasons = {e["reason"].split(":")[0] for e in entries}
    assert reasons == {"undecodable message", "not a message envelope"}, reasons
    # the raw bytes are kept: text as text, other bytes as base64
    assert any("payload_base64" in e for e in entries)
    assert all(("payload" in e) != ("payload_base64" in e) for e in entries)
    assert r.llen("research") == 0
    assert r.hlen("unacked") == 0, "a dead-lettered message must not be restored later"


def test_a_large_junk_message_is_kept_bounded(redis_url: str, r: redis.Redis) -> None:
    r.lpush("code", b"x" * 200_000)
    _publish(redis_url, "code", {"after": "junk"})
    assert _consume(redis_url, TRANSPORT, "code", want=1) == [{"after": "junk"}]
    (entry,) = deadletter.entries(r)
    assert len(entry["payload"]) <= deadletter.MAX_PAYLOAD_CHARS + 1
    assert entry["payload_chars"] == 200_000


def test_drain_removes_oldest_first(redis_url: str, r: redis.Redis) -> None:
    for i in range(5):
        r.lpush("research", f"junk {i}")
    _publish(redis_url, "research", {"done": True})
    _consume(redis_url, TRANSPORT, "research", want=1)
    first = deadletter.drain(r, 2)
    assert [e["payload"] for e in first] == ["junk 0", "junk 1"]
    assert len(deadletter.drain(r, 100)) == 3
    assert r.llen(keys.DEAD_LETTER) == 0
    assert deadletter.total(r) == 5, "draining does not lower the total"


def test_kombus_stock_transport_dies_on_the_same_junk(redis_url: str, r: redis.Redis) -> None:
    r.lpush("research", b"not json at all")
    with pytest.raises(json.JSONDecodeError):
        _consume(redis_url, None, "research", want=1)
    r.lpush("research", json.dumps({"body": "x"}))
    with pytest.raises(KeyError, match="properties"):
        _consume(redis_url, None, "research", want=1)
    assert deadletter.total(r) == 0
