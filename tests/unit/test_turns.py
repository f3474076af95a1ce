"""CPU turns: one thread at a time does its CPU work; network waits give the turn up.

The waits are the real ones: the SDK calling the scripted Messages-API server through
the mesh's own client (a reply delayed, a retry after an overloaded answer).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from agentmesh_shared.llm.client import make_client
from agentmesh_shared.llm.scripted_server import ScriptedHandler, ScriptedServer
from agentmesh_shared.settings import Settings
from agentmesh_shared.turns import TURNS, Turns

HOLD_S = 0.05


def _overlap(turns: Turns, together: int, threads: int = 4) -> int:
    """The most threads ever inside a turn at once. Each waits inside its turn until
    ``together`` threads are in (so the count cannot come out low on a slow machine),
    then holds it long enough for every other thread to try to come in."""
    inside = 0
    most = 0
    guard = threading.Lock()
    met = threading.Barrier(together, timeout=10)

    def work() -> None:
        nonlocal inside, most
        with turns.turn():
            with guard:
                inside += 1
                most = max(most, inside)
            met.wait()
            time.sleep(HOLD_S)
            with guard:
                inside -= 1

    workers = [threading.Thread(target=work) for _ in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    assert not met.broken, f"{together} threads never held a turn at once"
    return most


def test_one_turn_lets_one_thread_in_at_a_time_and_none_means_no_limit() -> None:
    assert _overlap(Turns(1), together=1) == 1
    assert _overlap(Turns(2), together=2) == 2
    assert _overlap(Turns(0), together=4) == 4
    with pytest.raises(ValueError, match="turns must be >= 0"):
        Turns(-1)


def test_a_turn_is_reentrant_and_a_released_wait_is_anothers_turn() -> None:
    turns = Turns(1)
    other_ran = threading.Event()

    def other() -> None:
        with turns.turn():
            other_ran.set()

    with turns.turn():
        with turns.turn():  # nested: no second slot taken, no deadlock
            assert turns.holding()
        helper = threading.Thread(target=other)
        helper.start()
        assert not other_ran.wait(HOLD_S)  # our turn: the other thread waits
        with turns.released():
            assert not turns.holding()
            assert other_ran.wait(5)  # our wait: its turn
        assert turns.holding()
        helper.join()
    assert not turns.holding()
    with turns.released():  # outside a turn: nothing to give up
        assert not turns.holding()


@pytest.fixture
def one_turn() -> Iterator[None]:
    slots = TURNS.slots
    TURNS.configure(1)
    yield
    TURNS.configure(slots)


@pytest.fixture
def client(
    scripted: ScriptedServer, one_turn: None, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> Any:
    """The mesh's model client against the scripted server, in a process of one turn."""
    monkeypatch.setenv("ANTHROPIC_API_KEY", "k")
    monkeypatch.setenv("ANTHROPIC_BASE_URL", f"http://127.0.0.1:{scripted.server_address[1]}")
    monkeypatch.setenv("AGENTMESH_LLM_MAX_RETRIES", "2")
    return make_client(Settings(_secrets_dir=tmp_path))  # type: ignore[call-arg]


def _call(client: Any) -> None:
    reply = client.messages.create(
        model="m", max_tokens=16, messages=[{"role": "user", "content": "hello"}]
    )
    assert reply.content


def test_threads_waiting_on_model_calls_wait_together(
    scripted: ScriptedServer, client: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    scripted.delay_s = 0.3
    in_flight = 0
    most = 0
    guard = threading.Lock()
    finish = scripted.finish_request

    def counted(request: Any, client_address: Any) -> None:
        nonlocal in_flight, most
        with guard:
            in_flight += 1
            most = max(most, in_flight)
        try:
            finish(request, client_address)
        finally:
            with guard:
                in_flight -= 1

    monkeypatch.setattr(scripted, "finish_request", counted)

    def loop() -> None:
        with TURNS.turn():  # as a planning step or an agent loop runs
            _call(client)

    loops = [threading.Thread(target=loop) for _ in range(4)]
    for t in loops:
        t.start()
    for t in loops:
        t.join()
    # One turn for the four of them, yet their calls were out at the same time.
    assert most == 4


def test_the_sdks_sleep_before_a_retry_is_anothers_turn(
    scripted: ScriptedServer, client: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    _call(client)  # connected: one call
    scripted.fail_remaining = 1  # the next is answered 529 (overloaded), then retried
    arrivals: list[float] = []
    handle = ScriptedHandler.do_POST

    def timed(handler: ScriptedHandler) -> None:
        arrivals.append(time.monotonic())
        handle(handler)

    monkeypatch.setattr(ScriptedHandler, "do_POST", timed)
    other_turn_at: list[float] = []

    def caller() -> None:
        with TURNS.turn():
            _call(client)

    def other() -> None:
        while not scripted.failed_calls:
            time.sleep(0.005)
        with TURNS.turn():
            other_turn_at.append(time.monotonic())

    threads = [threading.Thread(target=caller), threading.Thread(target=other)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert scripted.failed_calls == 1 and len(arrivals) == 2  # the 529, then its retry
    # The other thread's turn came while the SDK slept before its retry (>= 0.375 s),
    # not only once the retry went out on the network.
    (turn_at,) = other_turn_at
    assert turn_at < arrivals[1] - 0.2, (turn_at - arrivals[0], arrivals[1] - arrivals[0])
