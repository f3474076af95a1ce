"""Task records on a real redis-server: admission is atomic, updates never lose a write."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from agentmesh_orchestrator.store import AdmissionRefusedError, TaskStore
from agentmesh_shared import events, keys
from agentmesh_shared.models import TaskLimits, TaskRecord, TaskStatus, new_id

from tests.support.redis_server import CountedConnection, counted_client, redis_server


@pytest.fixture
def r(tmp_path: Path) -> Iterator[redis.Redis]:
    with redis_server(tmp_path) as client:
        yield client


def _record(text: str = "x") -> TaskRecord:
    return TaskRecord(
        id=new_id(), text=text, limits=TaskLimits(max_steps=3, token_budget=100, timeout_s=60)
    )


def test_admission_stops_at_the_limit_and_stores_nothing_past_it(r: redis.Redis) -> None:
    store = TaskStore(r)
    first, second = store.create(_record(), limit=2), store.create(_record(), limit=2)
    assert {first.id, second.id} == set(store.active_ids())
    assert set(r.zrange(keys.PLAN_DUE, 0, -1)) == {first.id, second.id}
    refused = _record()
    with pytest.raises(AdmissionRefusedError) as err:
        store.create(refused, idempotency="k1", limit=2)
    assert err.value.active == 2 and err.value.limit == 2
    assert store.get(refused.id) is None and not r.exists(f"{keys.PREFIX}:idempotency:k1")
    # An admitted task's "accepted" event and the planners' doorbell come with it, in
    # the same step; a refused one leaves neither.
    assert [e.kind for e in events.read(r, first.id)] == ["task.queued"]
    assert not r.exists(keys.task_events(refused.id))
    assert r.llen(keys.PLAN_DOORBELL) == 2
    store.update(first.id, lambda rec: setattr(rec, "status", TaskStatus.SUCCEEDED))
    assert store.create(_record(), limit=2).id  # a finished task frees its place


def test_concurrent_admissions_never_pass_the_limit(r: redis.Redis) -> None:
    store = TaskStore(r)
    admitted: list[str] = []

    def submit() -> None:
        with contextlib.suppress(AdmissionRefusedError):
            admitted.append(store.create(_record(), limit=5).id)

    threads = [threading.Thread(target=submit) for _ in range(40)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(admitted) == 5 == store.active_count()


def test_concurrent_updates_of_one_record_lose_nothing(r: redis.Redis) -> None:
    store = TaskStore(r)
    record = store.create(_record(), limit=10)
    writers = [TaskStore(r) for _ in range(4)]  # as on four replicas

    def bump(s: TaskStore) -> None:
        for _ in range(25):
            s.update(record.id, lambda rec: setattr(rec, "steps", rec.steps + 1))

    threads = [threading.Thread(target=bump, args=(s,)) for s in writers]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    stored = store.get(record.id)
    assert stored is not None and stored.steps == 100


def test_an_update_writes_the_record_its_events_and_checkpoint_in_one_round_trip(
    r: redis.Redis,
) -> None:
    counted = counted_client(r)
    store = TaskStore(counted)
    record = store.create(_record(), limit=10)
    assert store.get(record.id, remember=True) is not None
    store.update(record.id, lambda rec: setattr(rec, "steps", 1))  # loads the script
    CountedConnection.writes = 0
    running = events.encode(record.id, "task.running", "planning started")
    updated = store.update(
        record.id,
        lambda rec: setattr(rec, "status", TaskStatus.RUNNING),
        events=[running],
        checkpoint='{"steps": 1}',
    )
    assert CountedConnection.writes == 1
    assert updated.status is TaskStatus.RUNNING and updated.steps == 1
    stored = store.get(record.id)
    assert stored is not None and stored.status is TaskStatus.RUNNING
    assert [e.kind for e in events.read(r, record.id)] == ["task.queued", "task.running"]
    assert store.load_checkpoint(record.id) == '{"steps": 1}'
    assert 0 < r.ttl(keys.checkpoint(record.id)) <= keys.RETENTION_S
    # Without a checkpoint, the stored one stays.
    store.update(record.id, lambda rec: setattr(rec, "steps", 2))
    assert store.load_checkpoint(record.id) == '{"steps": 1}'


def test_a_version_remembered_too_long_costs_a_retry_not_a_write(r: redis.Redis) -> None:
    mine, theirs = TaskStore(r), TaskStore(r)  # as on two replicas
    record = mine.create(_record(), limit=10)
    mine.get(record.id, remember=True)
    theirs.update(record.id, lambda rec: setattr(rec, "steps", rec.steps + 1))
    runs: list[int] = []

    def bump(rec: TaskRecord) -> None:
        runs.append(rec.steps)
        rec.steps += 1

    note = events.encode(record.id, "task.step", "bumped")
    assert mine.update(record.id, bump, events=[note]).steps == 2
    # The first run saw the remembered version (0 steps), the swap answered with the
    # stored one (1 step), and the second run's writes are the ones that landed, once.
    assert runs == [0, 1]
    stored = mine.get(record.id)
    assert stored is not None and stored.steps == 2
    assert [e.message for e in events.read(r, record.id)] == ["task accepted", "bumped"]
    # Forgotten, the next update reads the record first and swaps at once.
    mine.forget(record.id)
    runs.clear()
    theirs.update(record.id, lambda rec: setattr(rec, "steps", rec.steps + 1))
    assert mine.update(record.id, bump).steps == 4 and runs == [3]


def test_an_update_of_a_record_gone_meanwhile_raises_and_forgets_it(r: redis.Redis) -> None:
    store = TaskStore(r)
    record = store.create(_record(), limit=10)
    store.get(record.id, remember=True)
    r.delete(keys.task(record.id))
    with pytest.raises(KeyError):
        store.update(record.id, lambda rec: setattr(rec, "steps", 1))
    with pytest.raises(KeyError):
        store.update(record.id, lambda rec: setattr(rec, "steps", 1))
    assert not r.exists(keys.task(record.id))
