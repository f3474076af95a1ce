"""A throwaway redis-server on a free loopback port, for tests of Redis-backed logic."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

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
