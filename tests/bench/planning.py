"""Planning benchmarks: effective concurrency, scaling over planner replicas, tracing cost.

Every figure is a ratio of two things measured in the same run on the same machine:

- effective concurrency: N tasks submitted at once with every model call taking
  ``delay_ms``; N x (one task's latency alone) / (wall time for the N). The CPU
  seconds the mesh's processes used give tasks per CPU-second, which shows where
  the machine, not the design, becomes the limit;
- planning scaling: the same load through 1, 2 and 3 planning replicas with few
  planning threads each, so planning is the bottleneck; efficiency is the
  throughput with k replicas over k times the throughput with one;
- tracing overhead: two meshes side by side, one exporting traces to a real
  collector and one not, tasks sent to them alternately (on, off, on, off, ...), so
  drifts in machine load hit both sides alike; the median of the pairs' ratios
  with a bootstrap 95 % interval says whether 2 % is resolved (the ratio of the
  two sides' medians is reported too).
"""

from __future__ import annotations

import json
import os
import random
import statistics
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx

from tests.support.mesh import LocalMesh, local_mesh, wait_until

TERMINAL = {"succeeded", "failed", "cancelled"}
# A batch of a thousand tasks queues on this machine's CPU: limits long enough that
# every task may finish, so the figure measures throughput, not time-outs.
PATIENT = {
    "AGENTMESH_TASK_TIMEOUT_S": "3600",
    "AGENTMESH_SUBTASK_TIMEOUT_S": "1800",
    "AGENTMESH_STALL_TIMEOUT_S": "1800",
}
CLK_TCK = os.sysconf("SC_CLK_TCK")


def run_task(api: httpx.Client, text: str, poll_s: float = 0.02) -> float:
    """Submit one task through ``api`` (a client holding the API token) and wait for
    it; its latency in seconds: from the moment before the submission to the
    moment its record became terminal (its ``updated_at``), so the poll's interval
    is not part of the figure."""
    start = time.time()
    task = api.post("/tasks", json={"text": text}, timeout=30).json()
    while task["status"] not in TERMINAL:
        time.sleep(poll_s)
        task = api.get(f"/tasks/{task['id']}", timeout=30).json()
    assert task["status"] == "succeeded", task
    return float(task["updated_at"]) - start


def mesh_cpu_by_process(mesh: LocalMesh) -> dict[str, float]:
    """CPU seconds (user + system, reaped children included) of each of the mesh's
    processes, counting every process in its process session."""
    sessions = {p.pid: name for name, p in mesh.procs.items() if p.alive()}
    ticks = dict.fromkeys(sessions.values(), 0)
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        # fields[3] is the session id; [11] utime, [12] stime, [13] cutime, [14] cstime
        name = sessions.get(int(fields[3]))
        if name is not None:
            ticks[name] += sum(int(f) for f in fields[11:15])
    return {name: t / CLK_TCK for name, t in ticks.items()}


def mesh_cpu_s(mesh: LocalMesh) -> float:
    """CPU seconds (user + system) of every process in the mesh's process sessions."""
    return sum(mesh_cpu_by_process(mesh).values())


def role_of(name: str) -> str:
    """``researcher-3`` -> ``researcher``: replicas of one role are summed."""
    head, _, tail = name.rpartition("-")
    return head if tail.isdigit() else name


def run_batch(mesh: LocalMesh, n: int, label: str, timeout: float = 1800) -> dict[str, Any]:
    """Submit ``n`` tasks at once and wait for every one; wall time, CPU, outcome."""
    r = mesh.redis()
    by_process_before = mesh_cpu_by_process(mesh)
    cpu_before = sum(by_process_before.values())
    start = time.time()
    with (
        ThreadPoolExecutor(max_workers=16) as pool,
        httpx.Client(timeout=60, headers=mesh.api.headers) as http,
    ):
        ids = list(
            pool.map(
                lambda i: http.post(f"{mesh.api_url}/tasks", json={"text": f"{label} {i}"}).json()[
                    "id"
                ],
                range(n),
            )
        )
    peak_running = 0

    def all_done() -> bool:
        nonlocal peak_running
        active = int(r.scard("agentmesh:tasks:active"))
        peak_running = max(peak_running, active)
        return active == 0

    wait_until(all_done, f"{n} tasks to end", timeout=timeout)
    by_process = mesh_cpu_by_process(mesh)
    cpu = sum(by_process.values()) - cpu_before
    # CPU milliseconds per task of each process (replicas of one role summed).
    per_task_ms: dict[str, float] = {}
    for name, after in by_process.items():
        spent = after - by_process_before.get(name, after)
        role = role_of(name)
        per_task_ms[role] = per_task_ms.get(role, 0.0) + spent * 1000 / n
    statuses: dict[str, int] = {}
    last_end = start
    for i in range(0, n, 200):
        raws = r.mget([f"agentmesh:task:{t}" for t in ids[i : i + 200]])
        for raw in raws:
            record = json.loads(raw) if raw else {"status": "missing"}
            statuses[record["status"]] = statuses.get(record["status"], 0) + 1
            last_end = max(last_end, float(record.get("updated_at", start)))
    # From the moment before the first submission to the moment the last task's record
    # became terminal: the wait's backing-off poll is not part of the figure.
    wall = last_end - start
    return {
        "tasks": n,
        "wall_s": round(wall, 2),
        "mesh_cpu_s": round(cpu, 1),
        "tasks_per_s": round(n / wall, 2),
        "tasks_per_cpu_s": round(n / cpu, 3) if cpu else None,
        "statuses": statuses,
        "peak_unfinished": peak_running,
        "cpu_ms_per_task": {k: round(v, 1) for k, v in sorted(per_task_ms.items())},
    }


@contextmanager
def effective_mesh(
    root: Path,
    n: int,
    delay_ms: int = 1000,
    planners: int = 1,
    every_env: dict[str, str] | None = None,
    llm_arrivals: Path | None = None,
    api_plans: bool = True,
) -> Iterator[LocalMesh]:
    """The effective-concurrency set-up, warmed up: 2 researchers and 2 coders with
    loops for ``n`` tasks at once, the API replica (planning too, unless not
    ``api_plans``) and ``planners`` planner processes, model calls of ``delay_ms``
    (logged to ``llm_arrivals``)."""
    loops = str(max(32, n // 2 + 8))
    with local_mesh(
        root,
        researchers=0,
        coders=0,
        llm_delay_ms=delay_ms,
        llm_arrivals=llm_arrivals,
        tracing=False,
        every_env=every_env,
    ) as mesh:
        mesh.procs.pop("orchestrator").stop()
        mesh.start_orchestrator(
            **PATIENT, **({} if api_plans else {"AGENTMESH_PLANNER_CONCURRENCY": "0"})
        )
        for _ in range(2):
            mesh.start_worker("researcher", AGENTMESH_WORKER_CONCURRENCY=loops, **PATIENT)
            mesh.start_worker("coder", AGENTMESH_WORKER_CONCURRENCY=loops, **PATIENT)
        for k in range(planners):
            mesh.start_planner(f"planner-{k + 1}", AGENTMESH_PLANNER_CONCURRENCY="128", **PATIENT)
        run_task(mesh.api, "warm-up")
        yield mesh


def bench_effective_concurrency(
    root: Path, ns: list[int], delay_ms: int, planners: int = 1, repeats: int = 5
) -> dict[str, Any]:
    """N tasks at once, for each N, on one mesh: 2 researchers, 2 coders, the API + planners.

    A batch of N <= 100 is CPU-bound on this machine, and the machine's own speed
    drifts by tens of percent within an hour: one batch is one draw. Each such N runs
    ``repeats`` batches (one task alone is measured before each, median of three) and
    reports the median ratio with the lowest and highest; N = 1000 runs once (its
    figure is that every task succeeds, and where CPU becomes the limit).
    """
    with effective_mesh(root, max(ns), delay_ms, planners) as mesh:
        rows = []
        alone_all: list[float] = []
        for n in ns:
            samples = []
            for rep in range(repeats if n <= 100 else 1):
                alone = [run_task(mesh.api, f"alone {n} {rep} {i}") for i in range(3)]
                alone_all.extend(alone)
                batch = run_batch(mesh, n, f"batch of {n} ({rep + 1})")
                ratio = statistics.median(alone) / batch["wall_s"]
                batch["one_task_s"] = round(statistics.median(alone), 2)
                batch["ratio_to_n"] = round(ratio, 3)
                batch["effective_concurrency"] = round(n * ratio, 1)
                samples.append(batch)
                print(f"effective concurrency: {json.dumps(batch)}", file=sys.stderr, flush=True)
            ratios = [b["ratio_to_n"] for b in samples]
            middle = sorted(samples, key=lambda b: b["ratio_to_n"])[(len(samples) - 1) // 2]
            rows.append(
                {
                    **middle,  # the median batch's own figures (wall, CPU, statuses)
                    "batches": len(samples),
                    "ratio_to_n": round(statistics.median(ratios), 3),
                    "ratio_range": [min(ratios), max(ratios)],
                    "effective_concurrency": round(n * statistics.median(ratios), 1),
                    "samples": samples,
                }
            )
        single = statistics.median(alone_all)
        return {"delay_ms": delay_ms, "one_task_s": round(single, 2), "batches": rows}


def bench_planning_scaling(
    root: Path, replicas: list[int], tasks: int, delay_ms: int, threads: int
) -> dict[str, Any]:
    """The same batch through 1..k planning replicas of ``threads`` steps each."""
    rows = []
    for k in replicas:
        where = root / f"replicas-{k}"
        where.mkdir()
        with local_mesh(
            where, researchers=0, coders=0, llm_delay_ms=delay_ms, tracing=False
        ) as mesh:
            mesh.procs.pop("orchestrator").stop()
            mesh.start_orchestrator(AGENTMESH_PLANNER_CONCURRENCY="0", **PATIENT)  # API only
            for _ in range(2):
                mesh.start_worker("researcher", AGENTMESH_WORKER_CONCURRENCY=str(tasks), **PATIENT)
                mesh.start_worker("coder", AGENTMESH_WORKER_CONCURRENCY=str(tasks), **PATIENT)
            for i in range(k):
                mesh.start_planner(
                    f"planner-{i + 1}", AGENTMESH_PLANNER_CONCURRENCY=str(threads), **PATIENT
                )
            run_task(mesh.api, "warm-up")
            batch = run_batch(mesh, tasks, f"scaling {k}")
            batch["replicas"] = k
            rows.append(batch)
            print(f"planning scaling: {json.dumps(batch)}", file=sys.stderr, flush=True)
    base = rows[0]["wall_s"]  # the same batch each time: throughput ratios are wall ratios
    for row in rows:
        row["speedup"] = round(base / row["wall_s"], 2)
        row["efficiency"] = round(base / row["wall_s"] / row["replicas"], 3)
    return {"delay_ms": delay_ms, "threads_per_replica": threads, "rows": rows}


def bench_tracing_interleaved(root: Path, pairs: int) -> dict[str, Any]:
    """Tasks sent alternately to a traced and an untraced mesh running side by side."""
    (root / "on").mkdir()
    (root / "off").mkdir()
    with (
        local_mesh(root / "on", tracing=True) as on,
        local_mesh(root / "off", tracing=False) as off,
    ):
        for mesh in (on, off):
            for i in range(2):
                run_task(mesh.api, f"warm-up {i}")
        times: dict[str, list[float]] = {"on": [], "off": []}
        for i in range(pairs):
            order = [("on", on), ("off", off)]
            if i % 2:
                order.reverse()  # neither side always goes first
            for name, mesh in order:
                times[name].append(run_task(mesh.api, f"tracing {name} {i}"))
    ratio = statistics.median(times["on"]) / statistics.median(times["off"])
    # The two tasks of a pair ran back to back under the same machine load: the
    # median of the pairs' ratios cancels that load, where the ratio of the two
    # medians only averages it out.
    paired = [a / b for a, b in zip(times["on"], times["off"], strict=True)]
    rng = random.Random(7)
    boots, paired_boots = [], []
    for _ in range(2000):
        a = [rng.choice(times["on"]) for _ in times["on"]]
        b = [rng.choice(times["off"]) for _ in times["off"]]
        boots.append(statistics.median(a) / statistics.median(b))
        paired_boots.append(statistics.median([rng.choice(paired) for _ in paired]))

    def ci95(xs: list[float]) -> tuple[float, float]:
        xs = sorted(xs)
        return xs[int(0.025 * len(xs))], xs[int(0.975 * len(xs)) - 1]

    low, high = ci95(boots)
    p_low, p_high = ci95(paired_boots)
    return {
        "pairs": pairs,
        "p50_on_s": round(statistics.median(times["on"]), 4),
        "p50_off_s": round(statistics.median(times["off"]), 4),
        "ratio": round(ratio, 3),
        "ci95": [round(low, 3), round(high, 3)],
        "paired_ratio": round(statistics.median(paired), 3),
        "paired_ci95": [round(p_low, 3), round(p_high, 3)],
        "resolves_2_percent": (p_high - p_low) / 2 <= 0.02,
        "samples": times,
    }
