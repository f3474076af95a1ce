"""A worker starts its loop threads when it is ready, not during its first burst."""

from __future__ import annotations

import threading
import time

from agentmesh_shared.worker import start_pool_threads
from celery.concurrency.thread import TaskPool


def test_every_thread_of_the_pool_is_started_before_the_first_subtask() -> None:
    pool = TaskPool(limit=12)
    try:
        assert len(pool.executor._threads) == 0  # made one per submission, lazily
        assert start_pool_threads(pool) == 12
        # A burst now finds its threads waiting: none is made for it.
        done = threading.Barrier(13, timeout=10)
        for _ in range(12):
            pool.on_apply(done.wait, args=(), kwargs={})
        done.wait()
        assert len(pool.executor._threads) == 12
    finally:
        pool.on_stop()


def test_a_pool_without_threads_is_left_as_it_is() -> None:
    assert start_pool_threads(object()) == 0
    assert start_pool_threads(None) == 0


def test_a_subtask_already_running_is_not_waited_for() -> None:
    """worker_ready comes once the consumer consumes: a backlog may be running already."""
    pool = TaskPool(limit=4)
    busy = threading.Event()
    try:
        pool.on_apply(busy.wait, args=(10,), kwargs={})
        started = time.monotonic()
        assert start_pool_threads(pool) == 4
        # The consumer's thread was not held, and a new subtask runs at once.
        assert time.monotonic() - started < 2
        ran = threading.Event()
        pool.on_apply(ran.set, args=(), kwargs={})
        assert ran.wait(2)
    finally:
        busy.set()
        pool.on_stop()
