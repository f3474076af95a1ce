"""Planning steps on a real redis-server, a real Celery producer and the scripted model.

The worker side is played through the hand-off module, exactly as a worker writes it;
nothing consumes the queues, so the messages a step sends stay there to be counted.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import anthropic
import pytest
import redis
from agentmesh_orchestrator.planner import Planner
from agentmesh_orchestrator.planner import log as planner_log
from agentmesh_orchestrator.schedule import Claim
from agentmesh_orchestrator.store import TaskStore
from agentmesh_shared import events, keys
from agentmesh_shared.celery_app import create_celery_app
from agentmesh_shared.handoff import Handoff
from agentmesh_shared.llm.scripted_server import ScriptedServer
from agentmesh_shared.models import (
    Role,
    SubtaskResult,
    TaskLimits,
    TaskRecord,
    TaskStatus,
    Usage,
    new_id,
)
from agentmesh_shared.settings import load_settings

from tests.support.redis_server import redis_server


@pytest.fixture(scope="module")
def llm_url() -> Iterator[str]:
    server = ScriptedServer(("127.0.0.1", 0))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


@pytest.fixture
def r(tmp_path: Path) -> Iterator[redis.Redis]:
    with redis_server(tmp_path) as client:
        yield client


@pytest.fixture
def planner(r: redis.Redis, llm_url: str) -> Planner:
    port = r.connection_pool.connection_kwargs["port"]
    settings = load_settings(
        redis_url=f"redis://127.0.0.1:{port}/0",
        environment="test",
        worker_hostname="planner-a",
        plan_recheck_s=7,
    )
    return Planner(
        settings=settings,
        redis=r,
        store=TaskStore(r),
        celery=create_celery_app(settings),
        llm_factory=lambda: anthropic.Anthropic(api_key="k", base_url=llm_url, max_retries=0),
    )


def _submit(planner: Planner, text: str = "plan me") -> str:
    record = TaskRecord(
        id=new_id(), text=text, limits=TaskLimits(max_steps=6, token_budget=50_000, timeout_s=300)
    )
    return planner.store.create(record, limit=100).id


def _step(planner: Planner, task_id: str) -> float | None:
    """Claim the task as the planning loop would, run one step, release it."""
    planner.redis.zadd(keys.PLAN_DUE, {task_id: time.time() - 1})
    [claim] = planner.schedule.claim_due(1)
    assert claim.task_id == task_id
    next_at = planner.step(claim)
    assert planner.schedule.release(task_id, next_at)
    return next_at


def _queued(r: redis.Redis, queue: str) -> int:
    return int(r.llen(queue))


def _kinds(r: redis.Redis, task_id: str) -> list[str]:
    return [json.loads(f["event"])["kind"] for _, f in r.xrange(keys.task_events(task_id))]


def _result(task_id: str, subtask_id: str, role: Role) -> SubtaskResult:
    now = time.time()
    return SubtaskResult(
        task_id=task_id,
        subtask_id=subtask_id,
        role=role,
        status="succeeded",
        worker=f"{role.value}-1",
        output=f"{role.value} output",
        usage=Usage(input_tokens=10, output_tokens=5),
        started_at=now,
        finished_at=now,
    )


def _event(task_id: str) -> str:
    return events.encode(task_id, "subtask.succeeded", "a subtask succeeded")


def test_a_step_sends_the_turns_delegations_and_ends_without_waiting(
    planner: Planner, r: redis.Redis
) -> None:
    task_id = _submit(planner)
    started = time.monotonic()
    next_at = _step(planner, task_id)
    assert time.monotonic() - started < 10  # no wait for the subtasks
    assert next_at is not None and next_at == pytest.approx(time.time() + 7, abs=3)
    record = planner.store.get(task_id)
    assert record is not None and record.status is TaskStatus.RUNNING
    assert [s.role for s in record.subtasks] == [Role.RESEARCHER, Role.CODER]
    assert all(s.dispatched_at for s in record.subtasks)
    assert _queued(r, "research") == 1 and _queued(r, "code") == 1
    # Looking again sends nothing twice.
    _step(planner, task_id)
    assert _queued(r, "research") == 1 and _queued(r, "code") == 1
    assert _kinds(r, task_id).count("subtask.queued") == 2


def test_results_continue_the_task_to_its_synthesis(planner: Planner, r: redis.Redis) -> None:
    task_id = _submit(planner)
    _step(planner, task_id)
    record = planner.store.get(task_id)
    assert record is not None
    handoff = Handoff(r)
    researcher, coder = record.subtasks
    handoff.start(
        task_id,
        researcher.id,
        "researcher-1",
        30,
        events.encode(task_id, "subtask.started", "started"),
    )
    _step(planner, task_id)
    record = planner.store.get(task_id)
    assert record is not None and record.subtasks[0].status is TaskStatus.RUNNING
    assert record.subtasks[0].worker == "researcher-1"

    due = r.zscore(keys.PLAN_DUE, task_id)
    assert due is not None and due > time.time() + 3  # the step awaits both results
    handoff.publish(_result(task_id, researcher.id, Role.RESEARCHER), _event(task_id))
    assert r.zscore(keys.PLAN_DUE, task_id) == due  # one result of two wakes nobody
    # A reader sees it at once, though the planner records it only at its next step.
    stored = planner.store.get(task_id)
    assert stored is not None and stored.subtasks[0].status is TaskStatus.RUNNING
    handoff.progress([stored])
    assert stored.subtasks[0].status is TaskStatus.SUCCEEDED
    assert stored.subtasks[0].result == "researcher output"
    assert stored.usage.input_tokens == record.usage.input_tokens + 10
    handoff.publish(_result(task_id, coder.id, Role.CODER), _event(task_id))
    woken = r.zscore(keys.PLAN_DUE, task_id)
    assert woken is not None and woken <= time.time()  # the last one wakes the task
    assert _step(planner, task_id) is None  # both in: the model answers, the task ends
    done = planner.store.get(task_id)
    assert done is not None and done.status is TaskStatus.SUCCEEDED
    assert done.result and "researcher output" in done.result and "coder output" in done.result
    assert done.steps == 2
    assert task_id not in planner.store.active_ids()
    assert r.zscore(keys.PLAN_DUE, task_id) is None


def test_a_subtask_whose_worker_stopped_renewing_is_sent_again(
    planner: Planner, r: redis.Redis
) -> None:
    task_id = _submit(planner)
    _step(planner, task_id)
    record = planner.store.get(task_id)
    assert record is not None
    researcher = record.subtasks[0]
    Handoff(r).start(
        task_id,
        researcher.id,
        "researcher-1",
        0.2,
        events.encode(task_id, "subtask.started", "started"),
    )
    time.sleep(0.4)  # the worker died: its lease lapsed without a result
    _step(planner, task_id)
    assert _queued(r, "research") == 2
    record = planner.store.get(task_id)
    assert record is not None
    sub = record.subtasks[0]
    assert sub.resends == 1 and sub.status is TaskStatus.QUEUED and sub.worker is None
    assert "subtask.resent" in _kinds(r, task_id)


def test_a_subtask_past_its_deadline_fails_and_the_model_hears_why(
    planner: Planner, r: redis.Redis
) -> None:
    task_id = _submit(planner)
    _step(planner, task_id)
    long_ago = time.time() - 10_000

    def age(rec: TaskRecord) -> None:
        for s in rec.subtasks:
            s.dispatched_at = long_ago

    planner.store.update(task_id, age)
    assert _step(planner, task_id) is None
    done = planner.store.get(task_id)
    assert done is not None and done.status is TaskStatus.FAILED
    assert done.error and done.error.startswith("every subtask failed")
    assert all("time limit" in (s.error or "") for s in done.subtasks)


def test_a_cancelled_task_ends_at_its_next_step(planner: Planner, r: redis.Redis) -> None:
    task_id = _submit(planner)
    _step(planner, task_id)
    r.set(keys.cancel_flag(task_id), "1")
    assert _step(planner, task_id) is None
    done = planner.store.get(task_id)
    assert done is not None and done.status is TaskStatus.CANCELLED


def test_a_step_of_a_replica_that_lost_its_lease_sends_nothing(
    planner: Planner, r: redis.Redis
) -> None:
    task_id = _submit(planner)
    r.zadd(keys.PLAN_DUE, {task_id: time.time() - 1})
    [claim] = planner.schedule.claim_due(1)
    assert claim.task_id == task_id
    r.set(keys.task_lease(task_id), "planner-b")  # taken over while this one paused
    planner._step_guarded(Claim(task_id, None))
    assert _queued(r, "research") == 0 and _queued(r, "code") == 0
    record = planner.store.get(task_id)
    assert record is not None and record.subtasks == []


def test_a_start_shows_to_readers_at_once_and_costs_no_planning_step(
    planner: Planner, r: redis.Redis
) -> None:
    task_id = _submit(planner)
    _step(planner, task_id)
    due_before = r.zscore(keys.PLAN_DUE, task_id)
    record = planner.store.get(task_id)
    assert record is not None
    researcher, coder = record.subtasks
    Handoff(r).start(
        task_id,
        researcher.id,
        "researcher-7",
        30,
        events.encode(task_id, "subtask.started", "started"),
    )
    assert r.zscore(keys.PLAN_DUE, task_id) == due_before  # no step was queued for it
    stored = planner.store.get(task_id)
    assert stored is not None and stored.subtasks[0].status is TaskStatus.QUEUED
    Handoff(r).progress([stored])
    shown = stored
    assert shown.subtasks[0].status is TaskStatus.RUNNING
    assert shown.subtasks[0].worker == "researcher-7" and shown.subtasks[0].started_at
    assert shown.subtasks[1].status is TaskStatus.QUEUED and shown.subtasks[1].id == coder.id


def test_only_a_lease_another_replica_took_is_reported_lost(
    planner: Planner, r: redis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    """Of the steps read as running before a renewal, one ended meanwhile (it released
    its lease) and one's lease another replica took: only the second is lost."""
    ended, taken, running = (_submit(planner, f"task {n}") for n in range(3))
    for task_id in (ended, taken, running):
        r.zadd(keys.PLAN_DUE, {task_id: time.time() - 1})
        assert planner.schedule.claim_due(1) == [Claim(task_id, None)]
        planner._stepping.add(task_id)
    mine = sorted(planner._stepping)
    # What _step_in_turn does at a step's end: leave _stepping, then release.
    planner._stepping.discard(ended)
    assert planner.schedule.release(ended, None)
    r.set(keys.task_lease(taken), "planner-b")
    with caplog.at_level("WARNING", logger=planner_log.name):
        assert planner.renew_leases(mine) == {taken}
    warnings = [rec.getMessage() for rec in caplog.records if rec.levelname == "WARNING"]
    assert warnings == [f"lost the planning lease of task {taken}"]
    assert planner.schedule.held(running)


def test_a_task_whose_step_still_runs_here_is_not_stepped_twice(
    planner: Planner, r: redis.Redis
) -> None:
    """The lease of a step this replica still runs lapsed (a stall longer than the
    lease) and the task fell due: claiming it again renews the lease for the running
    step and starts no second one."""
    task_id = _submit(planner)
    r.zadd(keys.PLAN_DUE, {task_id: time.time() - 1})
    assert planner.schedule.claim_due(1) == [Claim(task_id, None)]
    planner._stepping.add(task_id)  # its step runs (and stalls)
    r.delete(keys.task_lease(task_id))
    r.zadd(keys.PLAN_DUE, {task_id: time.time() - 1})
    assert planner.claim_due() == 0
    assert planner.schedule.held(task_id)
    assert planner._stepping == {task_id}
    assert (r.zscore(keys.PLAN_DUE, task_id) or 0) > time.time()
