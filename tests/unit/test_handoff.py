"""The subtask hand-off on a real redis-server: what workers write, what the planner reads."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from agentmesh_shared import keys
from agentmesh_shared.handoff import RESULT_TTL_S, Handoff, lease_key, result_key, started_key
from agentmesh_shared.models import Role, SubtaskResult

from tests.support.redis_server import redis_server


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
        started_at=now,
        finished_at=now,
    )


def test_a_start_is_seen_with_its_lease_and_wakes_nobody(r: redis.Redis) -> None:
    handoff = Handoff(r)
    later = time.time() + 60
    r.zadd(keys.PLAN_DUE, {"t1": later})
    handoff.mark_started("t1-a", "researcher-1", lease_ttl_s=5)
    view = handoff.snapshot(["t1-a"])["t1-a"]
    assert view.result is None and view.leased
    assert view.started is not None and view.started.worker == "researcher-1"
    # No planning step for a start: the task stays due when it was, nobody is rung.
    assert r.zscore(keys.PLAN_DUE, "t1") == pytest.approx(later)
    assert r.llen(keys.PLAN_DOORBELL) == 0
    assert 0 < r.ttl(started_key("t1-a")) <= RESULT_TTL_S
    # What a reader shows before the planner's next look records it.
    starts = handoff.starts(["t1-a", "t1-b"])
    assert list(starts) == ["t1-a"] and starts["t1-a"].worker == "researcher-1"
    assert handoff.starts([]) == {}


def test_the_first_result_wins_and_ends_the_lease(r: redis.Redis) -> None:
    handoff = Handoff(r)
    handoff.mark_started("t1-a", "researcher-1", lease_ttl_s=5)
    assert handoff.publish(_result("t1-a", "researcher-1", "first"))
    assert not handoff.publish(_result("t1-a", "researcher-2", "second"))
    view = handoff.snapshot(["t1-a"])["t1-a"]
    assert view.result is not None and view.result.output == "first"
    assert not view.leased and not r.exists(lease_key("t1-a"))
    assert 0 < r.ttl(result_key("t1-a")) <= RESULT_TTL_S


def test_a_lapsed_lease_shows_and_a_resend_forgets_the_start(r: redis.Redis) -> None:
    handoff = Handoff(r)
    handoff.mark_started("t1-a", "researcher-1", lease_ttl_s=0.2)
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
