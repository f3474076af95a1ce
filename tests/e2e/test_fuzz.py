"""The fuzz tier: junk on every queue and random API requests while real tasks run.

Against the real compose mesh. First a clean run of real tasks (the baseline), then
the same tasks again while junk broker messages of every shape stream onto every
queue and random requests hit the API. Passing means: no worker restarted, every
junk message dead-lettered (exactly as many as were sent), no API answer >= 500,
every real task succeeded, and the real tasks' p50 latency within 2x of the clean
run's. ``make test`` runs a short version; ``make fuzz`` the long one
(AGENTMESH_FUZZ_MESSAGES / _REQUESTS / _TASKS) and prints the figures, which also
go to build/fuzz-figures.json.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest

from tests.e2e.conftest import ROOT, ComposeMesh
from tests.support import api_fuzz, junk

MESSAGES = int(os.environ.get("AGENTMESH_FUZZ_MESSAGES", "330"))
REQUESTS = int(os.environ.get("AGENTMESH_FUZZ_REQUESTS", "400"))
TASKS = int(os.environ.get("AGENTMESH_FUZZ_TASKS", "3"))
QUEUES = ["research", "code"]


def _token() -> str:
    """The mesh's API credential (scripts/secrets.sh wrote it when the mesh started;
    the e2e tier raises the flood limits, since one credential drives both the real
    tasks and the fuzz)."""
    return (ROOT / "secrets" / "api_token").read_text().split()[0]


def _auth() -> dict[str, str]:
    return {"Authorization": f"Bearer {_token()}"}


def _api(mesh: ComposeMesh) -> str:
    return f"http://127.0.0.1:{mesh.api_port}"


def _run_task(mesh: ComposeMesh, i: int) -> dict[str, Any]:
    """One real task through the API; its latency from the record's own clock."""
    with httpx.Client(base_url=_api(mesh), headers=_auth(), timeout=60) as client:
        text = f"Find out what a Collatz sequence is and compute the longest one below {1000 + i}"
        created = client.post("/tasks", json={"text": text})
        assert created.status_code == 202, created.text
        task_id = created.json()["id"]
        after = "0"
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline:
            reply = client.get(f"/tasks/{task_id}/events", params={"after": after, "wait": 5})
            if reply.status_code == 429:
                time.sleep(float(reply.headers.get("retry-after", "1")))
                continue
            assert reply.status_code == 200, reply.text
            for event in reply.json():
                after = event["id"]
            record: dict[str, Any] = client.get(f"/tasks/{task_id}").json()
            if record["status"] in {"succeeded", "failed", "cancelled"}:
                record["latency_s"] = record["updated_at"] - record["created_at"]
                return record
    raise AssertionError(f"task {task_id} did not end within 600 s")


def _worker_state(mesh: ComposeMesh) -> tuple[int, int]:
    """(container restarts, in-process consumer restarts) over every worker container."""
    restarts = 0
    for role in ("researcher", "coder"):
        for container in mesh.containers(role):
            restarts += int(mesh.inspect(container)["RestartCount"])  # type: ignore[call-overload]
    logs = mesh.compose("logs", "--no-color", "researcher", "coder", check=False).stdout
    in_process = logs.count("Unrecoverable error") + logs.count("without a shutdown request")
    return restarts, in_process


def _dead_letter_total(mesh: ComposeMesh) -> int:
    reply = httpx.get(f"{_api(mesh)}/deadletter", params={"limit": 1}, headers=_auth())
    assert reply.status_code == 200, reply.text
    return int(reply.headers["x-dead-letter-total"])


def _push_junk(mesh: ComposeMesh, sent: list[tuple[str, str, bytes]]) -> int:
    (container,) = mesh.containers("orchestrator")
    proc = subprocess.run(
        ["docker", "exec", "-i", container, "python", "-c", junk.PUSHER],
        input=junk.pusher_input(sent),
        capture_output=True,
        text=True,
        timeout=3600,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    return int(proc.stdout.strip())


def _fire(
    mesh: ComposeMesh, requests: list[api_fuzz.FuzzRequest]
) -> tuple[Counter[int], list[str]]:
    codes: Counter[int] = Counter()
    errors: list[str] = []
    lock = threading.Lock()
    client = httpx.Client(base_url=_api(mesh), timeout=60, limits=httpx.Limits(max_connections=16))

    def one(req: api_fuzz.FuzzRequest) -> None:
        try:
            headers = {k: v.encode("latin-1") for k, v in req.headers.items()}
            reply = client.request(req.method, req.path, headers=headers, content=req.body)
        except httpx.LocalProtocolError:  # the client itself refused to send it
            with lock:
                codes[0] += 1
            return
        except httpx.HTTPError as err:
            with lock:
                errors.append(f"{req.method} {req.path[:80]}: {type(err).__name__}: {err}")
            return
        with lock:
            codes[reply.status_code] += 1
            if reply.status_code >= 500:
                errors.append(
                    f"{req.method} {req.path[:80]} -> {reply.status_code} {reply.text[:200]}"
                )

    with ThreadPoolExecutor(max_workers=8) as pool:
        list(pool.map(one, requests))
    client.close()
    return codes, errors


# The long run needs more than the tier's default per-test timeout.
@pytest.mark.timeout(600 + (MESSAGES + REQUESTS) // 5)
def test_junk_messages_and_random_requests_do_not_stall_the_mesh(compose_mesh: ComposeMesh) -> None:
    mesh = compose_mesh
    restarts_before = _worker_state(mesh)

    clean = [_run_task(mesh, i) for i in range(TASKS)]
    assert all(t["status"] == "succeeded" for t in clean), [t.get("error") for t in clean]
    known_ids = [t["id"] for t in clean]

    dead_before = _dead_letter_total(mesh)
    sent = junk.messages(MESSAGES, QUEUES)
    requests = api_fuzz.requests(REQUESTS, known_ids, token=_token())
    pushed: list[int] = []
    fired: list[tuple[Counter[int], list[str]]] = []
    started = time.monotonic()
    pusher = threading.Thread(target=lambda: pushed.append(_push_junk(mesh, sent)))
    firer = threading.Thread(target=lambda: fired.append(_fire(mesh, requests)))
    pusher.start()
    firer.start()
    fuzzed: list[dict[str, Any]] = []
    while len(fuzzed) < TASKS or pusher.is_alive() or firer.is_alive():
        fuzzed.append(_run_task(mesh, TASKS + len(fuzzed)))
    pusher.join()
    firer.join()
    fuzz_s = time.monotonic() - started

    expected = dead_before + len(sent)
    deadline = time.monotonic() + 300
    while _dead_letter_total(mesh) < expected and time.monotonic() < deadline:
        time.sleep(1)
    dead = _dead_letter_total(mesh) - dead_before
    restarts_after = _worker_state(mesh)
    codes, errors = fired[0]
    p50_clean = statistics.median(t["latency_s"] for t in clean)
    p50_fuzz = statistics.median(t["latency_s"] for t in fuzzed)
    figures = {
        "junk_messages_sent": pushed[0] if pushed else 0,
        "junk_shapes": len(junk.SHAPES),
        "queues": QUEUES,
        "dead_lettered": dead,
        "api_requests": REQUESTS,
        "api_answers_by_status": {k: v for k, v in sorted(codes.items()) if k},
        "api_requests_unsendable": codes[0],
        "api_5xx": sum(n for code, n in codes.items() if code >= 500),
        "api_transport_errors": len([e for e in errors if "->" not in e]),
        "worker_container_restarts": restarts_after[0] - restarts_before[0],
        "worker_consumer_restarts": restarts_after[1] - restarts_before[1],
        "real_tasks_clean": len(clean),
        "real_tasks_under_fuzz": len(fuzzed),
        "real_tasks_failed": sum(t["status"] != "succeeded" for t in clean + fuzzed),
        "p50_clean_s": round(p50_clean, 2),
        "p50_fuzz_s": round(p50_fuzz, 2),
        "p50_ratio": round(p50_fuzz / p50_clean, 2),
        "fuzz_phase_s": round(fuzz_s, 1),
    }
    (ROOT / "build").mkdir(exist_ok=True)
    (ROOT / "build" / "fuzz-figures.json").write_text(json.dumps(figures, indent=2) + "\n")
    print("\nfuzz figures:\n" + json.dumps(figures, indent=2))

    assert figures["junk_messages_sent"] == len(sent)
    assert not errors, errors[:20]
    assert figures["api_5xx"] == 0
    assert figures["worker_container_restarts"] == 0
    assert figures["worker_consumer_restarts"] == 0
    assert dead == len(sent), f"{dead} dead letters for {len(sent)} junk messages"
    assert figures["real_tasks_failed"] == 0, [t.get("error") for t in clean + fuzzed]
    assert figures["p50_ratio"] <= 2.0, figures
