"""The planning schedule on a real redis-server: one replica per step, no wake-up lost."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from agentmesh_orchestrator.schedule import Claim, PlanSchedule
from agentmesh_shared import keys
from agentmesh_shared.handoff import Handoff

from tests.support.redis_server import redis_server


@pytest.fixture
def r(tmp_path: Path) -> Iterator[redis.Redis]:
    with redis_server(tmp_path) as client:
        yield client


def _due_at(r: redis.Redis, task_id: str) -> float | None:
    return r.zscore(keys.PLAN_DUE, task_id)


def _claim(s: PlanSchedule, task_id: str) -> Claim | None:
    """Claim what is due and return the claim of ``task_id``, if it was among them."""
    return next((c for c in s.claim_due(10) if c.task_id == task_id), None)


def test_only_one_replica_claims_a_due_task(r: redis.Redis) -> None:
    a, b = PlanSchedule(r, "a", 10), PlanSchedule(r, "b", 10)
    assert a.enqueue(["t1"]) == 1
    assert a.claim_due(10) == [Claim("t1", None)]
    assert b.claim_due(10) == []  # claiming moved the entry a lease period ahead
    assert a.held("t1") and not b.held("t1")


def test_claims_go_to_the_tasks_due_longest_and_pass_over_held_leases(
    r: redis.Redis,
) -> None:
    a, b = PlanSchedule(r, "a", 10), PlanSchedule(r, "b", 10)
    now = time.time()
    r.zadd(keys.PLAN_DUE, {f"t{i}": now - 10 + i for i in range(5)})
    r.zadd(keys.PLAN_DUE, {"later": now + 30})
    r.set(keys.task_lease("t0"), "b")  # b runs t0's step; a result woke it meanwhile
    assert a.claim_due(1) == []  # it looks at as many entries as it may claim ...
    assert [c.task_id for c in a.claim_due(2, look_at=3)] == ["t1", "t2"]  # ... or more
    assert [c.task_id for c in b.claim_due(5)] == ["t3", "t4"]  # not "later", nor t0
    assert a.claim_due(5) == []  # only t0 is due, and b holds it
    assert b.held("t0") and all(a.held(f"t{i}") for i in (1, 2))
    assert _due_at(r, "t0") == pytest.approx(now - 10)  # passed over, left as it was
    assert (_due_at(r, "t1") or 0) > now  # claimed: a lease period ahead
    assert a.claim_due(0) == []


def test_a_task_not_due_is_not_claimed(r: redis.Redis) -> None:
    a = PlanSchedule(r, "a", 10)
    r.zadd(keys.PLAN_DUE, {"t1": time.time() + 30})
    assert a.claim_due(10) == []
    assert not r.exists(keys.task_lease("t1"))


def test_a_dead_replicas_task_is_taken_over_once_its_lease_lapses(r: redis.Redis) -> None:
    dead, alive = PlanSchedule(r, "dead", 3), PlanSchedule(r, "alive", 3)
    dead.enqueue(["t1"])
    assert _claim(dead, "t1") is not None
    assert _claim(alive, "t1") is None
    r.pexpire(keys.task_lease("t1"), 1)  # the replica died: its lease lapses ...
    r.zadd(keys.PLAN_DUE, {"t1": time.time() - 1})  # ... and so does its hold on the entry
    time.sleep(0.05)
    assert alive.claim_due(10) == [Claim("t1", "dead")]
    assert not dead.release("t1", None)  # the late replica cannot end what it lost
    assert _due_at(r, "t1") is not None


def test_a_result_during_a_step_keeps_the_task_due_through_renew_and_release(
    r: redis.Redis,
) -> None:
    a = PlanSchedule(r, "a", 10)
    a.enqueue(["t1"])
    assert _claim(a, "t1") is not None
    Handoff(r).wake("t1")  # a worker's result arrives while the step runs
    woken_at = _due_at(r, "t1")
    assert woken_at is not None and woken_at <= time.time()
    assert a.renew(["t1"]) == {"t1"}
    assert _due_at(r, "t1") == woken_at  # renewal did not push it back
    assert a.release("t1", time.time() + 60)
    assert _due_at(r, "t1") == woken_at  # nor did the end of the step
    assert not r.exists(keys.task_lease("t1"))


def test_release_sets_the_next_look_or_forgets_a_finished_task(r: redis.Redis) -> None:
    a = PlanSchedule(r, "a", 10)
    a.enqueue(["t1", "t2"])
    assert [c.task_id for c in a.claim_due(2)] == ["t1", "t2"]
    later = time.time() + 60
    assert a.release("t1", later)
    assert _due_at(r, "t1") == pytest.approx(later)
    assert a.release("t2", None)
    assert _due_at(r, "t2") is None
    assert not r.exists(keys.task_stepping("t1")) and not r.exists(keys.task_stepping("t2"))
    assert a.enqueue(["t1"]) == 0  # adoption never moves a scheduled task


def test_renew_reports_a_lost_lease(r: redis.Redis) -> None:
    a, b = PlanSchedule(r, "a", 3), PlanSchedule(r, "b", 3)
    a.enqueue(["t1", "t2"])
    assert [c.task_id for c in a.claim_due(2)] == ["t1", "t2"]
    r.set(keys.task_lease("t2"), "b")  # another replica took t2 over
    assert a.renew(["t1", "t2"]) == {"t1"}
    assert b.held("t2")
