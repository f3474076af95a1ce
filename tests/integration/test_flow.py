"""The whole flow on real parts: CLI -> API -> planner -> Celery -> workers -> Chroma."""

from __future__ import annotations

import hashlib
import json
import re
import socket

from agentmesh_shared.llm.scripted_server import coder_program
from agentmesh_shared.memory import MemoryClient

from tests.support.mesh import LocalMesh


def test_submit_wait_json_runs_both_roles_for_real(mesh: LocalMesh) -> None:
    text = "Compare the growth of two prime-counting estimates"
    done = mesh.cli("submit", text, "--wait", "--json")
    assert done.returncode == 0, done.stderr + done.stdout
    task = json.loads(done.stdout)

    assert task["status"] == "succeeded"
    assert re.fullmatch(r"[0-9a-f]{32}", task["trace_id"])
    assert task["result"].startswith("[scripted model]")
    roles = sorted(s["role"] for s in task["subtasks"])
    assert roles == ["coder", "researcher"]
    for sub in task["subtasks"]:
        assert sub["status"] == "succeeded", sub
        assert sub["worker"].startswith(sub["role"]), sub  # the worker's host name
        assert sub["result"]
        assert sub["usage"]["input_tokens"] > 0 and sub["usage"]["output_tokens"] > 0

    # The coder's program really ran: its output is what running it here gives.
    coder = next(s for s in task["subtasks"] if s["role"] == "coder")
    subject = " ".join(coder["instruction"].split())
    expected_hash = hashlib.sha256(subject.encode()).hexdigest()[:16]
    assert f"sha256={expected_hash}" in coder["result"]
    run = coder["artifacts"]["runs"][0]
    assert run["exit_code"] == 0 and f"sha256={expected_hash}" in run["stdout"]
    assert coder["artifacts"]["files"]["main.py"] == coder_program(coder["instruction"])
    assert f"sha256={expected_hash}" in task["result"]

    # The researcher's note is in Chroma, tagged with the task and subtask ids.
    researcher = next(s for s in task["subtasks"] if s["role"] == "researcher")
    note = MemoryClient(mesh.chroma_url, token=mesh.chroma_token).get(f"{researcher['id']}-note-1")
    assert note is not None
    assert note.metadata["task_id"] == task["id"]
    assert note.metadata["subtask_id"] == researcher["id"]
    assert text[:40] in note.text

    # Usage on the record is the planner's plus every subtask's, and matches the budget.
    sub_in = sum(s["usage"]["input_tokens"] for s in task["subtasks"])
    assert task["usage"]["input_tokens"] > sub_in
    spent = int(mesh.redis().hget(f"agentmesh:task:{task['id']}:budget", "used") or 0)
    assert spent == task["usage"]["input_tokens"] + task["usage"]["output_tokens"]


def test_status_result_list_and_workers(mesh: LocalMesh) -> None:
    submitted = mesh.cli("submit", "Summarise the state of the mesh", "--json")
    assert submitted.returncode == 0, submitted.stderr
    task_id = json.loads(submitted.stdout)["id"]
    waited = mesh.cli("submit", "another task", "--wait")
    assert waited.returncode == 0, waited.stderr
    assert "succeeded" in waited.stdout
    assert "researcher" in waited.stderr  # progress was shown while waiting

    status = mesh.cli("status", task_id, "--json")
    assert status.returncode == 0
    assert json.loads(status.stdout)["id"] == task_id

    listing = json.loads(mesh.cli("list", "--json").stdout)
    assert task_id in {t["id"] for t in listing}

    workers = json.loads(mesh.cli("workers", "--json").stdout)
    assert {w["role"] for w in workers} == {"researcher", "coder"}
    assert all(w["hostname"] != socket.gethostname() for w in workers)


def test_follow_streams_progress(mesh: LocalMesh) -> None:
    done = mesh.cli("submit", "follow me", "--follow")
    assert done.returncode == 0, done.stderr
    assert "planner step 1: delegate, delegate" in done.stderr
    assert "coder step" in done.stderr and "researcher step" in done.stderr
