"""The subtask hand-off on a real redis-server: what workers write, what the planner reads."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from agentmesh_shared import events, keys
from agentmesh_shared.handoff import (
    RESULT_TTL_S,
    Handoff,
    Start,
    awaited_key,
    lease_key,
    result_key,
    started_key,
)
from agentmesh_shared.models import (
    Role,
    SubtaskRecord,
    SubtaskResult,
    TaskLimits,
    TaskRecord,
    TaskStatus,
    Usage,
)

from tests.support.redis_server import CountedConnection, counted_client, redis_server


@pytest.fixture
def r(tmp_path: Path) -> Iterator[redis.Redis]:
    with redis_server(tmp_path) as client:
        yield client


def _result(subtask_id: str, worker: str, output: str) -> SubtaskResult:
    now = time.time()
    return SubtaskResult(
        task_id="t1",
        subtask_id=subtask_id,
        role=Role.RESEARCHER,
        status="succeeded",
        worker=worker,
        output=output,
        usage=Usage(input_tokens=3, output_tokens=7),
        started_at=now,
        finished_at=now,
    )


EVENT = events.encode("t1", "subtask.succeeded", "researcher-1 succeeded")
STARTED = events.encode("t1", "subtask.started", "a researcher started")


def _record(*subtask_ids: str) -> TaskRecord:
    return TaskRecord(
        id="t1",
        text="a task",
        limits=TaskLimits(max_steps=6, token_budget=1000, timeout_s=60),
        status=TaskStatus.RUNNING,
        subtasks=[
            SubtaskRecord(id=s, role=Role.RESEARCHER, instruction="look") for s in subtask_ids
        ],
    )


def _due(r: redis.Redis) -> float | None:
    return r.zscore(keys.PLAN_DUE, "t1")


def test_only_the_last_awaited_result_wakes_the_task(r: redis.Redis) -> None:
    handoff = Handoff(r)
    later = time.time() + 60
    r.zadd(keys.PLAN_DUE, {"t1": later})
    assert handoff.await_results("t1", ["t1-a", "t1-b"]) == 2
    assert 0 < r.ttl(awaited_key("t1")) <= RESULT_TTL_S
    handoff.publish(_result("t1-a", "researcher-1", "a"), EVENT)
    assert _due(r) == pytest.approx(later) and r.llen(keys.PLAN_DOORBELL) == 0
    handoff.publish(_result("t1-b", "researcher-2", "b"), EVENT)
    woken = _due(r)
    assert woken is not None and woken <= time.time()
    assert r.llen(keys.PLAN_DOORBELL) == 1
    # A duplicate of a result already in wakes the task again: harmless, never lost.
    r.zadd(keys.PLAN_DUE, {"t1": later})
    handoff.publish(_result("t1-b", "researcher-3", "b again"), EVENT)
    woken = _due(r)
    assert woken is not None and woken <= time.time()


def test_results_that_arrived_while_the_step_ran_wake_the_task_when_it_ends(
    r: redis.Redis,
) -> None:
    handoff = Handoff(r)
    later = time.time() + 60
    # With no awaited list yet (the step is still sending), every result wakes.
    handoff.publish(_result("t1-a", "researcher-1", "a"), EVENT)
    woken = _due(r)
    assert woken is not None and woken <= time.time()
    r.zadd(keys.PLAN_DUE, {"t1": later})  # the step's own release, say
    # The step ends waiting for a and b: a is in already, so only b is awaited.
    assert handoff.await_results("t1", ["t1-a", "t1-b"]) == 1
    assert _due(r) == pytest.approx(later)
    handoff.publish(_result("t1-b", "researcher-1", "b"), EVENT)
    woken = _due(r)
    assert woken is not None and woken <= time.time()
    # Both in before the step ended: its end wakes the task itself.
    r.zadd(keys.PLAN_DUE, {"t1": later})
    assert handoff.await_results("t1", ["t1-a", "t1-b"]) == 0
    woken = _due(r)
    assert woken is not None and woken <= time.time()


def test_a_reader_sees_a_result_before_the_planner_records_it(r: redis.Redis) -> None:
    handoff = Handoff(r)
    handoff.await_results("t1", ["t1-a", "t1-b"])
    handoff.start("t1", "t1-b", "researcher-2", 5, STARTED)
    handoff.publish(_result("t1-a", "researcher-1", "found it"), EVENT)
    record = _record("t1-a", "t1-b")
    handoff.progress([record])
    a, b = record.subtasks
    assert a.status is TaskStatus.SUCCEEDED and a.result == "found it"
    assert a.worker == "researcher-1" and a.finished_at
    assert record.usage.output_tokens == 7  # the result's usage counts in the task's
    assert b.status is TaskStatus.RUNNING and b.worker == "researcher-2"
    # A finished task is shown as the planner recorded it.
    done = _record("t1-a")
    done.status = TaskStatus.SUCCEEDED
    handoff.progress([done])
    assert done.subtasks[0].status is TaskStatus.QUEUED


def test_a_start_is_seen_with_its_lease_and_wakes_nobody(r: redis.Redis) -> None:
    handoff = Handoff(r)
    later = time.time() + 60
    r.zadd(keys.PLAN_DUE, {"t1": later})
    handoff.start("t1", "t1-a", "researcher-1", 5, STARTED)
    view = handoff.snapshot(["t1-a"])["t1-a"]
    assert view.result is None and view.leased
    assert view.started is not None and view.started.worker == "researcher-1"
    # No planning step for a start: the task stays due when it was, nobody is rung.
    assert r.zscore(keys.PLAN_DUE, "t1") == pytest.approx(later)
    assert r.llen(keys.PLAN_DOORBELL) == 0
    assert 0 < r.ttl(started_key("t1-a")) <= RESULT_TTL_S
    # What a reader shows before the planner's next look records it.
    record = _record("t1-a", "t1-b")
    handoff.progress([record])
    a, b = record.subtasks
    assert a.status is TaskStatus.RUNNING and a.worker == "researcher-1" and a.started_at
    assert b.status is TaskStatus.QUEUED and b.worker is None
    handoff.progress([])  # nothing to look up: no round trip, no error


def test_the_first_result_wins_and_ends_the_lease(r: redis.Redis) -> None:
    handoff = Handoff(r)
    handoff.start("t1", "t1-a", "researcher-1", 5, STARTED)
    assert handoff.publish(_result("t1-a", "researcher-1", "first"), EVENT)
    assert not handoff.publish(_result("t1-a", "researcher-2", "second"), EVENT)
    # The start, and each delivery reporting what it did.
    assert r.xlen(keys.task_events("t1")) == 3
    view = handoff.snapshot(["t1-a"])["t1-a"]
    assert view.result is not None and view.result.output == "first"
    assert not view.leased and not r.exists(lease_key("t1-a"))
    assert 0 < r.ttl(result_key("t1-a")) <= RESULT_TTL_S


def test_a_lapsed_lease_shows_and_a_resend_forgets_the_start(r: redis.Redis) -> None:
    handoff = Handoff(r)
    handoff.start("t1", "t1-a", "researcher-1", 0.2, STARTED)
    handoff.renew(["t1-a"], "researcher-1", lease_ttl_s=0.2)
    time.sleep(0.4)  # the worker is gone: nobody renews
    view = handoff.snapshot(["t1-a"])["t1-a"]
    assert view.started is not None and not view.leased and view.result is None
    handoff.forget_start("t1-a")
    assert handoff.snapshot(["t1-a"])["t1-a"].started is None


def test_a_wake_never_postpones_a_step_already_due(r: redis.Redis) -> None:
    handoff = Handoff(r)
    due = time.time() - 5
    r.zadd(keys.PLAN_DUE, {"t1": due})
    handoff.wake("t1")
    assert r.zscore(keys.PLAN_DUE, "t1") == pytest.approx(due)
    r.ltrim(keys.PLAN_DOORBELL, 1, 0)
    for _ in range(200):
        handoff.wake("t1")
    assert r.llen(keys.PLAN_DOORBELL) <= 64  # the doorbell stays small


def test_a_start_is_one_round_trip_and_leaves_a_finished_subtask_alone(r: redis.Redis) -> None:
    handoff = Handoff(counted_client(r))
    handoff.start("t1", "t1-a", "researcher-1", 5, STARTED)  # loads the script
    CountedConnection.writes = 0
    assert handoff.start("t1", "t1-b", "researcher-2", 5, STARTED) is Start.STARTED
    assert CountedConnection.writes == 1
    view = handoff.snapshot(["t1-b"])["t1-b"]
    assert view.started is not None and view.started.worker == "researcher-2" and view.leased
    assert [e.message for e in events.read(r, "t1")] == ["a researcher started"] * 2
    # A redelivery of a subtask with a result writes nothing.
    handoff.publish(_result("t1-a", "researcher-1", "found it"), EVENT)
    r.delete(lease_key("t1-a"))
    assert handoff.start("t1", "t1-a", "researcher-3", 5, STARTED) is Start.DONE
    assert not r.exists(lease_key("t1-a"))
    first = handoff.snapshot(["t1-a"])["t1-a"].started
    assert first is not None and first.worker == "researcher-1"
    assert len(events.read(r, "t1")) == 3
