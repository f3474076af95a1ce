"""The start-up heap freeze: what exists is skipped by collections, what comes later
is collected as before."""

from __future__ import annotations

import gc
import weakref
from collections.abc import Iterator

import pytest
from agentmesh_shared.heap import freeze_startup_heap


class _Node:
    def __init__(self) -> None:
        self.other: _Node | None = None


def _cycle() -> weakref.ref[_Node]:
    a, b = _Node(), _Node()
    a.other, b.other = b, a
    return weakref.ref(a)


@pytest.fixture
def frozen() -> Iterator[int]:
    try:
        yield freeze_startup_heap()
    finally:
        gc.unfreeze()


def test_the_objects_alive_at_the_freeze_leave_the_collected_generations(frozen: int) -> None:
    # (frozen objects freed by reference counting leave the count meanwhile)
    assert frozen > 1000 and gc.get_freeze_count() > 1000
    later = _cycle()  # made after the freeze: an ordinary cycle
    gc.collect()
    assert later() is None


def test_garbage_left_before_the_freeze_is_collected_first() -> None:
    gc.disable()  # no automatic collection may take the cycle first
    try:
        left = _cycle()
        assert left() is not None
        freeze_startup_heap()
        assert left() is None  # collected, not frozen for good
    finally:
        gc.unfreeze()
        gc.enable()
