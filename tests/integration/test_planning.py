"""Planning scaled out on real processes: replicas share tasks, waiting costs no thread,
a dead replica's task is taken over, and admission answers 429 past its limit.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.mesh import LocalMesh, local_mesh, wait_until

DELAY_MS = 1500


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalMesh]:
    root = Path(tmp_path_factory.mktemp("planning"))
    with local_mesh(root, researchers=0, coders=0, llm_delay_ms=0, tracing=False) as running:
        yield running


def submit(mesh: LocalMesh, text: str) -> str:
    reply = mesh.api.post("/tasks", json={"text": text})
    assert reply.status_code == 202, reply.text
    task_id: str = reply.json()["id"]
    return task_id


def task(mesh: LocalMesh, task_id: str) -> dict[str, Any]:
    record: dict[str, Any] = mesh.api.get(f"/tasks/{task_id}").json()
    return record


def events(mesh: LocalMesh, task_id: str) -> list[dict[str, Any]]:
    got: list[dict[str, Any]] = mesh.api.get(f"/tasks/{task_id}/events").json()
    return got


def wait_all(mesh: LocalMesh, ids: list[str], timeout: float = 180) -> list[dict[str, Any]]:
    wait_until(
        lambda: all(task(mesh, i)["status"] in {"succeeded", "failed", "cancelled"} for i in ids),
        f"{len(ids)} tasks to end",
        timeout,
    )
    return [task(mesh, i) for i in ids]


def _threads(pid: int) -> int:
    return len(list(Path(f"/proc/{pid}/task").iterdir()))


def test_waiting_tasks_hold_no_planner_thread(mesh: LocalMesh) -> None:
    """Two planning threads, 24 tasks: every task delegates and waits, then all finish."""
    mesh.procs.pop("orchestrator").stop()
    orchestrator = mesh.start_orchestrator(AGENTMESH_PLANNER_CONCURRENCY="2")
    threads_idle = _threads(orchestrator.pid)
    ids = [submit(mesh, f"wait without a thread {i}") for i in range(24)]

    def all_delegated() -> bool:
        return all(len(task(mesh, i)["subtasks"]) == 2 for i in ids)

    wait_until(all_delegated, "every task to delegate with no worker running", timeout=120)
    assert all(task(mesh, i)["status"] == "running" for i in ids)
    assert _threads(orchestrator.pid) <= threads_idle + 4  # the waits are records, not threads
    mesh.start_worker("researcher")
    mesh.start_worker("coder")
    assert all(t["status"] == "succeeded" for t in wait_all(mesh, ids)), ids


def test_a_sigkilled_planner_mid_step_is_taken_over_and_nothing_is_sent_twice(
    mesh: LocalMesh,
) -> None:
    mesh.procs.pop("orchestrator").stop()
    # The API alone: every step runs on one of the two planning replicas.
    mesh.start_orchestrator(AGENTMESH_PLANNER_CONCURRENCY="0")
    mesh.start_planner("planner-1", AGENTMESH_PLAN_LEASE_S="3")
    mesh.start_planner("planner-2", AGENTMESH_PLAN_LEASE_S="3")
    mesh.llm_admin(delay_ms=DELAY_MS)
    try:
        ids = [submit(mesh, f"take me over {i}") for i in range(4)]
        r = mesh.redis()
        holders: list[str] = []

        def inside_a_step() -> bool:
            holders.extend(
                i for i in ids if (r.get(f"agentmesh:task:{i}:lease") or "").startswith("planner-1")
            )
            return bool(holders)

        wait_until(inside_a_step, "planner-1 to be inside a step", timeout=60)
        mesh.procs["planner-1"].signal(signal.SIGKILL)
        killed_at = time.monotonic()
        victim = holders[0]
        wait_until(
            lambda: any(e["kind"] == "task.resumed" for e in events(mesh, victim)),
            "planner-2 to take the task over",
            timeout=60,
        )
        assert time.monotonic() - killed_at < 3 + 10  # seconds after the lease lapsed
        done = wait_all(mesh, ids)
    finally:
        mesh.llm_admin(delay_ms=0)
    for record in done:
        assert record["status"] == "succeeded", record
        queued = [e for e in events(mesh, record["id"]) if e["kind"] == "subtask.queued"]
        assert len(queued) == len(record["subtasks"]) == 2, queued
    resumed = next(e for e in events(mesh, victim) if e["kind"] == "task.resumed")
    assert "planner-2" in resumed["message"] and "planner-1" in resumed["message"]


def test_past_the_admission_limit_the_api_answers_429_and_the_cli_says_so(
    mesh: LocalMesh,
) -> None:
    active = int(mesh.redis().scard("agentmesh:tasks:active"))
    mesh.procs.pop("orchestrator").stop()
    mesh.start_orchestrator(AGENTMESH_MAX_ACTIVE_TASKS=str(active + 1))
    mesh.llm_admin(delay_ms=DELAY_MS)
    try:
        first = submit(mesh, "the last place")
        before = int(mesh.redis().zcard("agentmesh:tasks"))
        refused = mesh.api.post("/tasks", json={"text": "one too many"})
        assert refused.status_code == 429
        assert refused.headers["Retry-After"] == "5"
        assert "limit of" in refused.json()["detail"]
        assert "AGENTMESH_MAX_ACTIVE_TASKS" in refused.json()["detail"]
        out = mesh.cli("submit", "one too many")
        assert out.returncode == 6, out
        assert "busy" in out.stderr and "Retry-After: 5" in out.stderr
        assert int(mesh.redis().zcard("agentmesh:tasks")) == before  # nothing stored
        assert wait_all(mesh, [first])[0]["status"] == "succeeded"
    finally:
        mesh.llm_admin(delay_ms=0)
    assert submit(mesh, "a place is free again")
