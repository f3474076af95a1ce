"""Faults injected into real processes: every accepted task still ends, exactly once.

One mesh for the module: two researchers and one coder, with the scripted model
slowed down so subtasks are in flight long enough to be hit.
"""

from __future__ import annotations

import json
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.mesh import LocalMesh, local_mesh, wait_until

DELAY_MS = 400


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalMesh]:
    root = Path(tmp_path_factory.mktemp("faults"))
    with local_mesh(root, researchers=2, coders=1, llm_delay_ms=DELAY_MS) as running:
        yield running


@pytest.fixture(autouse=True)
def _healthy_mesh(mesh: LocalMesh) -> Iterator[None]:
    mesh.llm_admin(delay_ms=DELAY_MS, fail_count=0)
    yield
    # Replace any worker a test killed, so the next test starts from two researchers.
    for name, proc in list(mesh.procs.items()):
        if name.startswith(("researcher", "coder")) and not proc.alive():
            del mesh.procs[name]
            mesh.start_worker(name.split("-")[0])


def submit(mesh: LocalMesh, text: str, **body: Any) -> str:
    reply = mesh.api.post("/tasks", json={"text": text, **body})
    assert reply.status_code == 202, reply.text
    task_id: str = reply.json()["id"]
    return task_id


def task(mesh: LocalMesh, task_id: str) -> dict[str, Any]:
    record: dict[str, Any] = mesh.api.get(f"/tasks/{task_id}").json()
    return record


def wait_done(mesh: LocalMesh, task_id: str, timeout: float = 120) -> dict[str, Any]:
    wait_until(
        lambda: task(mesh, task_id)["status"] in {"succeeded", "failed", "cancelled"},
        f"task {task_id} to end",
        timeout,
    )
    return task(mesh, task_id)


def running_worker(mesh: LocalMesh, task_id: str, role: str) -> str:
    """The host name of the worker that started the task's subtask of ``role``."""
    found: list[str] = []

    def started() -> bool:
        for sub in task(mesh, task_id)["subtasks"]:
            if sub["role"] == role and sub["status"] == "running" and sub["worker"]:
                found.append(sub["worker"])
                return True
        return False

    wait_until(started, f"a {role} to start on task {task_id}", timeout=60)
    return found[0]


def events(mesh: LocalMesh, task_id: str) -> list[dict[str, Any]]:
    got: list[dict[str, Any]] = mesh.api.get(f"/tasks/{task_id}/events").json()
    return got


def test_sigkilled_worker_mid_subtask_is_replaced_and_the_task_succeeds(mesh: LocalMesh) -> None:
    task_id = submit(mesh, "survive a SIGKILL")
    victim = running_worker(mesh, task_id, "researcher")
    mesh.procs[victim].signal(signal.SIGKILL)

    done = wait_done(mesh, task_id)
    assert done["status"] == "succeeded", done
    researcher = next(s for s in done["subtasks"] if s["role"] == "researcher")
    assert researcher["status"] == "succeeded"
    assert researcher["worker"] != victim
    assert any(e["kind"] == "subtask.resent" for e in events(mesh, task_id))
    assert len(done["subtasks"]) == 2  # resent, not duplicated


def test_sigterm_lets_in_flight_subtasks_finish_or_hands_them_back(mesh: LocalMesh) -> None:
    task_id = submit(mesh, "survive a SIGTERM")
    victim = running_worker(mesh, task_id, "researcher")
    proc = mesh.procs[victim]
    proc.signal(signal.SIGTERM)
    assert proc.popen is not None
    proc.popen.wait(timeout=90)  # the worker's soft shutdown, well within a stop grace period

    done = wait_done(mesh, task_id)
    assert done["status"] == "succeeded", done
    assert all(s["status"] == "succeeded" for s in done["subtasks"])


def test_a_restarted_orchestrator_resumes_from_its_checkpoint(mesh: LocalMesh) -> None:
    task_id = submit(mesh, "survive an orchestrator restart")
    running_worker(mesh, task_id, "coder")  # planned and delegated: checkpoint 1 is written
    mesh.procs["orchestrator"].signal(signal.SIGKILL)
    mesh.procs["orchestrator"].stop()
    mesh.start_orchestrator()

    done = wait_done(mesh, task_id)
    assert done["status"] == "succeeded", done
    assert done["steps"] == 2  # the planning step was not repeated
    assert len(done["subtasks"]) == 2  # the delegations were not sent again
    queued = [e for e in events(mesh, task_id) if e["kind"] == "subtask.queued"]
    assert len(queued) == 2


def test_queued_and_in_flight_tasks_survive_a_redis_restart(mesh: LocalMesh) -> None:
    ids = [submit(mesh, f"survive a Redis restart {i}") for i in range(3)]
    running_worker(mesh, ids[0], "researcher")
    mesh.restart_redis(down_s=2.0)
    for task_id in ids:
        done = wait_done(mesh, task_id, timeout=180)
        assert done["status"] == "succeeded", done
    # Every worker is still (or again, restarted in place) serving: no supervisor needed.
    time.sleep(5)
    assert all(p.alive() for n, p in mesh.procs.items() if n.startswith(("researcher", "coder")))
    assert wait_done(mesh, submit(mesh, "after the restart"))["status"] == "succeeded"


def test_model_errors_are_retried_with_backoff_then_succeed(mesh: LocalMesh) -> None:
    before = mesh.llm_stats()["failed_calls"]
    mesh.llm_admin(delay_ms=0, fail_status=529, fail_count=2)
    done = wait_done(mesh, submit(mesh, "ride out two 529s"))
    assert done["status"] == "succeeded", done
    assert mesh.llm_stats()["failed_calls"] - before == 2


def test_a_model_that_keeps_failing_fails_the_task_clearly_and_in_bounded_time(
    mesh: LocalMesh,
) -> None:
    mesh.llm_admin(delay_ms=0, fail_status=500, fail_count=1000)
    started = time.monotonic()
    done = wait_done(mesh, submit(mesh, "the model is down"), timeout=120)
    assert done["status"] == "failed"
    assert "model call failed" in done["error"]
    assert time.monotonic() - started < 90


def test_a_token_budget_below_the_plan_fails_the_task_naming_the_budget(mesh: LocalMesh) -> None:
    task_id = submit(mesh, "too expensive", token_budget=1500)
    done = wait_done(mesh, task_id)
    assert done["status"] == "failed"
    assert "token_budget" in done["error"] and "1500" in done["error"]
    spent = int(mesh.redis().hget(f"agentmesh:task:{task_id}:budget", "used") or 0)
    # No call starts once the budget is spent: each subtask overshoots by at most the
    # one call it had in flight when the planner's or its own check passed.
    failed_subs = [s for s in done["subtasks"] if s["status"] == "failed"]
    assert all("token_budget" in (s["error"] or "") for s in failed_subs), failed_subs
    assert spent >= 1500


def test_cancel_stops_a_running_task(mesh: LocalMesh) -> None:
    mesh.llm_admin(delay_ms=1500)
    task_id = submit(mesh, "cancel me")
    running_worker(mesh, task_id, "researcher")
    out = mesh.cli("cancel", task_id)
    assert out.returncode == 0, out.stderr
    done = wait_done(mesh, task_id)
    assert done["status"] == "cancelled"
    again = mesh.cli("cancel", task_id)
    assert again.returncode == 2 and "already cancelled" in again.stderr


def test_the_same_idempotency_key_returns_the_same_task(mesh: LocalMesh) -> None:
    first = mesh.cli("submit", "once only", "--idempotency-key", "key-123", "--json")
    second = mesh.cli("submit", "once only", "--idempotency-key", "key-123", "--json")
    assert first.returncode == second.returncode == 0
    assert json.loads(first.stdout)["id"] == json.loads(second.stdout)["id"]
    other = mesh.cli("submit", "once only", "--idempotency-key", "key-456", "--json")
    assert json.loads(other.stdout)["id"] != json.loads(first.stdout)["id"]


def test_a_stalled_loop_fails_its_subtask_and_the_wedged_worker_exits(tmp_path: Path) -> None:
    with local_mesh(tmp_path, researchers=0, coders=1, llm_delay_ms=0) as stall_mesh:
        stall_mesh.procs.pop("coder-1").stop()
        worker = stall_mesh.start_worker(
            "coder", AGENTMESH_STALL_TIMEOUT_S="3", AGENTMESH_LLM_TIMEOUT_S="120"
        )
        stall_mesh.llm_admin(delay_ms=60_000)  # every model call hangs for a minute
        task_id = stall_mesh.api.post("/tasks", json={"text": "hang"}).json()["id"]
        stall_mesh.llm_admin(delay_ms=60_000)

        def coder_failed() -> bool:
            subs = stall_mesh.api.get(f"/tasks/{task_id}").json()["subtasks"]
            return any(s["role"] == "coder" and s["status"] == "failed" for s in subs)

        wait_until(coder_failed, "the stalled coder subtask to fail", timeout=90)
        sub = next(
            s
            for s in stall_mesh.api.get(f"/tasks/{task_id}").json()["subtasks"]
            if s["role"] == "coder"
        )
        assert "stalled" in sub["error"]
        assert worker.popen is not None
        assert worker.popen.wait(timeout=60) == 70  # wedged: exits for its restart policy
        stall_mesh.api.post(f"/tasks/{task_id}/cancel")


def test_cli_submit_over_a_dead_api_says_so(mesh: LocalMesh) -> None:
    out = subprocess.run(
        [
            str(Path(mesh.procs["orchestrator"].argv[0])),
            "--api",
            "http://127.0.0.1:9",
            "submit",
            "x",
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert out.returncode == 3 and "make up" in out.stderr


def test_memory_down_fails_the_subtasks_and_the_task_clearly_in_bounded_time(
    tmp_path: Path,
) -> None:
    with local_mesh(tmp_path, researchers=0, coders=0, tracing=False) as down:
        dead = "http://127.0.0.1:9"  # nothing listens: Chroma is down for these workers
        down.start_worker("researcher", CHROMA_URL=dead)
        down.start_worker("coder", CHROMA_URL=dead)
        started = time.monotonic()
        task_id = down.api.post("/tasks", json={"text": "memory is down"}).json()["id"]
        done = wait_done(down, task_id, timeout=120)
        assert time.monotonic() - started < 90
        assert done["status"] == "failed"
        assert done["error"].startswith("every subtask failed")
        for sub in done["subtasks"]:
            assert sub["status"] == "failed"
            assert "MemoryUnavailableError" in sub["error"] and dead in sub["error"]
