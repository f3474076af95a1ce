"""A throwaway redis-server on a free loopback port, for tests of Redis-backed logic."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import redis

from tests.support.chroma_server import free_port
from tests.support.mesh import redis_server_bin, wait_until


@contextmanager
def redis_server(root: Path) -> Iterator[redis.Redis]:
    port = free_port()
    proc = subprocess.Popen(
        [
            redis_server_bin(),
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--dir",
            str(root),
            "--save",
            "",
            "--appendonly",
            "no",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    client = redis.Redis(port=port, decode_responses=True)
    try:
        wait_until(lambda: bool(client.ping()), "redis-server to answer PING", timeout=20)
        yield client
    finally:
        proc.terminate()
        proc.wait(10)


class CountedConnection(redis.Connection):
    """A connection that counts what it sends to the server: one write a round trip."""

    writes = 0

    def send_packed_command(self, command: Any, check_health: bool = True) -> None:
        type(self).writes += 1
        super().send_packed_command(command, check_health)


def counted_client(r: redis.Redis) -> redis.Redis:
    """A client of the same server as ``r`` whose round trips
    :class:`CountedConnection` counts."""
    port = r.connection_pool.connection_kwargs["port"]
    return redis.Redis(
        connection_pool=redis.ConnectionPool(
            connection_class=CountedConnection, port=port, decode_responses=True
        )
    )
