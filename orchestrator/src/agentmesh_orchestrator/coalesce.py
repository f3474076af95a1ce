"""Calls made at the same moment, run as one.

The memory service answers many request threads that each want one small thing:
embed one text, store one note, run one query. Most of what each costs is fixed per
call (a forward pass's set-up; a Chroma request, its parsing, its transaction, its
index update), so calls that arrive together are far cheaper run together. A
:class:`Coalescer` does that: a caller joins the waiting list; whoever holds the pass
lock takes the oldest waiting items that fit one pass, runs them in one call, and
hands each caller its own item's answer, or the pass's error. A caller alone runs at
once, in a pass of one; nothing waits on a timer.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from typing import Generic, TypeVar

__all__ = ["Coalescer"]

ItemT = TypeVar("ItemT")
OutT = TypeVar("OutT")


class _Pending(Generic[ItemT, OutT]):
    __slots__ = ("done", "error", "item", "out")

    def __init__(self, item: ItemT) -> None:
        self.item = item
        self.done = False
        self.out: OutT | None = None
        self.error: BaseException | None = None


class Coalescer(Generic[ItemT, OutT]):
    """Run ``run`` over the items that callers of :meth:`__call__` submit at once.

    ``run`` takes a non-empty list of items and returns one answer per item, in
    order. A pass takes the oldest waiting item and, up to ``max_items``, every
    other waiting item for which ``fits(taken, item)`` holds (by default all), so
    items of one kind share a pass even when other kinds arrive between them. Passes
    run one at a time.
    """

    def __init__(
        self,
        run: Callable[[list[ItemT]], Sequence[OutT]],
        *,
        max_items: int = 64,
        fits: Callable[[list[ItemT], ItemT], bool] | None = None,
    ) -> None:
        if max_items < 1:
            msg = "max_items must be >= 1"
            raise ValueError(msg)
        self._run = run
        self.max_items = max_items
        self._fits = fits
        self._pass_lock = threading.Lock()
        self._guard = threading.Lock()
        self._waiting: list[_Pending[ItemT, OutT]] = []

    def __call__(self, item: ItemT) -> OutT:
        mine: _Pending[ItemT, OutT] = _Pending(item)
        with self._guard:
            self._waiting.append(mine)
        # Whoever takes an item off the waiting list answers it before releasing the
        # pass lock: so once a caller holds the lock, its item is either answered or
        # still waiting, and then this caller runs it along with the others.
        while True:
            with self._pass_lock:
                if not mine.done:
                    with self._guard:
                        batch = self._take()
                    self._run_pass(batch)
            if mine.done:
                if mine.error is not None:
                    raise mine.error
                return mine.out  # type: ignore[return-value]

    def _take(self) -> list[_Pending[ItemT, OutT]]:
        """The oldest waiting item, and after it every waiting item that fits with
        those taken, oldest first; what does not fit waits for a later pass, in which
        it is the oldest or behind older items only."""
        taken: list[_Pending[ItemT, OutT]] = []
        items: list[ItemT] = []
        left: list[_Pending[ItemT, OutT]] = []
        for pending in self._waiting:
            if not taken or (len(taken) < self.max_items and self._admits(items, pending.item)):
                taken.append(pending)
                items.append(pending.item)
            else:
                left.append(pending)
        self._waiting[:] = left
        return taken

    def _admits(self, taken: list[ItemT], item: ItemT) -> bool:
        return self._fits is None or self._fits(taken, item)

    def _run_pass(self, batch: list[_Pending[ItemT, OutT]]) -> None:
        try:
            outs = self._run([p.item for p in batch])
            if len(outs) != len(batch):
                msg = f"a pass of {len(batch)} items gave {len(outs)} answers"
                raise RuntimeError(msg)  # noqa: TRY301 - every caller of the pass hears it
        except BaseException as err:  # noqa: BLE001 - handed to every caller of the pass
            for pending in batch:
                pending.error = err
                pending.done = True
            return
        for pending, out in zip(batch, outs, strict=True):
            pending.out = out
            pending.done = True
