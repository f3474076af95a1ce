"""CPU turns: a process's threads run their Python work a few at a time.

A planner replica or a worker runs one thread per planning step or agent loop in
flight (128 or more), and those threads spend most of their time waiting on model
calls. When a burst of replies arrives, every woken thread contends for the GIL. A
thread then gives the GIL up at each of its Redis round trips and waits behind the
others to get it back, so each round trip costs several context switches instead of
one. Measured on a planner's first steps, 100 threads at once with 1 s model calls
(``docs/measurements.md``): 11.3-12.5 ms of CPU and 430-470 context switches a step
with no limit, 8.1-9.3 ms and ~90 with two turns, 6.5 ms and 36 with one, as on a
single thread (5.9 ms).

A thread takes a *turn* (:meth:`Turns.turn`) for its CPU work, and gives it up while
it waits on something slow (:meth:`Turns.released`): the network wait of a model or
memory call (in :mod:`agentmesh_shared.http_pools`), the SDK's sleep before a retry,
an agent's tools. Redis round trips are short and keep the turn. With one turn per
process the steps of a burst run one after the other at the CPU cost of one thread;
with two (``AGENTMESH_CPU_TURNS``, the default) one thread's Redis round trip
overlaps another's work, which matters when the cores are busy and a round trip
waits for redis-server to be scheduled. 0 turns switches this off (every thread runs
when the GIL lets it).

A thread holding a turn must not wait for something only a thread waiting for a turn
can give; the waiters hold nothing shared (they wait at the start of a step or
subtask, or after a released wait). A thread that blocks while holding its turn
(Redis down and its client retrying) holds up the process's other turns meanwhile,
as it would hold up its own work.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager


class Turns:
    def __init__(self, slots: int = 0) -> None:
        self._local = threading.local()
        self.configure(slots)

    def configure(self, slots: int) -> None:
        """At most ``slots`` threads of the process hold a turn at once; 0: no limit.
        Called once at start-up, before any thread takes a turn."""
        if slots < 0:
            msg = f"turns must be >= 0, got {slots}"
            raise ValueError(msg)
        self.slots = slots
        self._sem = threading.BoundedSemaphore(slots) if slots else None

    def holding(self) -> bool:
        return bool(getattr(self._local, "held", False))

    @contextmanager
    def turn(self) -> Iterator[None]:
        """Run the block holding a turn (at once if this thread holds one already)."""
        sem = self._sem
        if sem is None or self.holding():
            yield
            return
        sem.acquire()
        self._local.held = True
        try:
            yield
        finally:
            self._local.held = False
            sem.release()

    @contextmanager
    def released(self) -> Iterator[None]:
        """Give this thread's turn up for the block (a slow wait), and take it back."""
        sem = self._sem
        if sem is None or not self.holding():
            yield
            return
        self._local.held = False
        sem.release()
        try:
            yield
        finally:
            sem.acquire()
            self._local.held = True


TURNS = Turns()
"""The process's turns; the entry point sets their number (``settings_or_exit``)."""
