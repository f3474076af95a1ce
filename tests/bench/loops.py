"""Loops held by one worker process, and the resident memory each one costs.

One researcher process with ``AGENTMESH_WORKER_CONCURRENCY=loops`` and the scripted
model answering every call after ``delay_ms``. One subtask runs first, alone, so the
fixed costs (the embedding model, the SDK, the Chroma client, connection pools) are
paid before the baseline is read; then ``loops`` subtasks are sent at once. Every
0.2 s the bench reads the worker's in-flight count (its heartbeat record), its RSS
and its thread count. Reported: the most loops held at once over the loops sent, and
(peak RSS - warm RSS) / loops held: the memory of one loop.

    uv run python -m tests.bench.loops --loops 500 --delay-ms 1000
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

from tests.bench.plots import plot_series
from tests.support.mesh import LocalMesh, local_mesh

TIMEOUT_S = 900


def proc_status(pid: int) -> dict[str, int]:
    """VmRSS (kB) and Threads of a process, from /proc."""
    out: dict[str, int] = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in {"VmRSS", "Threads"}:
            out[key] = int(value.split()[0])
    return out


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _send(mesh: LocalMesh, prefix: str, n: int) -> list[str]:
    from agentmesh_shared.celery_app import create_celery_app
    from agentmesh_shared.models import TASK_NAME_BY_ROLE, Role, SubtaskMessage
    from agentmesh_shared.settings import load_settings

    app = create_celery_app(load_settings(redis_url=mesh.redis_url))
    ids = []
    for i in range(n):
        msg = SubtaskMessage(
            task_id=f"{prefix}-task",
            subtask_id=f"{prefix}-{i}",
            role=Role.RESEARCHER,
            instruction=f"loops probe {i}",
            max_steps=5,
            deadline=time.time() + TIMEOUT_S,
        )
        app.send_task(
            TASK_NAME_BY_ROLE[Role.RESEARCHER], args=[msg.model_dump(mode="json")], queue="research"
        )
        ids.append(msg.subtask_id)
    return ids


def _done(mesh: LocalMesh, ids: list[str]) -> int:
    r = mesh.redis()
    pipe = r.pipeline()
    for subtask_id in ids:
        pipe.exists(f"agentmesh:subtask:{subtask_id}:result")
    return sum(pipe.execute())


def bench_loops(root: Path, loops: int, delay_ms: int) -> dict[str, Any]:
    with local_mesh(root, researchers=0, coders=0, llm_delay_ms=delay_ms, tracing=False) as mesh:
        worker = mesh.start_worker("researcher", AGENTMESH_WORKER_CONCURRENCY=str(loops))
        rss_start_kb = proc_status(worker.pid)["VmRSS"]
        warm = _send(mesh, "warm", 1)
        deadline = time.monotonic() + 120
        while _done(mesh, warm) < 1:
            if time.monotonic() > deadline:
                raise RuntimeError("the warm-up subtask did not finish:\n" + mesh.logs())
            time.sleep(0.1)
        warm_status = proc_status(worker.pid)
        cpu0 = cpu_seconds(worker.pid)
        r = mesh.redis()
        start = time.monotonic()
        ids = _send(mesh, "loop", loops)
        samples: list[dict[str, float]] = []
        while True:
            info = r.hget("agentmesh:workers", "researcher-1")
            status = proc_status(worker.pid)
            done = _done(mesh, ids)
            samples.append(
                {
                    "t": time.monotonic() - start,
                    "in_flight": json.loads(info)["in_flight"] if info else 0,
                    "rss_mb": status["VmRSS"] / 1024,
                    "threads": status["Threads"],
                    "done": done,
                }
            )
            if done == loops:
                break
            if time.monotonic() - start > TIMEOUT_S:
                raise RuntimeError(f"only {done}/{loops} subtasks finished:\n" + mesh.logs())
            time.sleep(0.2)
        elapsed = time.monotonic() - start
        cpu = cpu_seconds(worker.pid) - cpu0
        failed = sum(
            1
            for subtask_id in ids
            if json.loads(r.get(f"agentmesh:subtask:{subtask_id}:result") or "{}").get("status")
            != "succeeded"
        )
    held = max(s["in_flight"] for s in samples)
    peak_mb = max(s["rss_mb"] for s in samples)
    warm_mb = warm_status["VmRSS"] / 1024
    plot_series(
        "loops",
        f"One researcher process, {loops} loops sent at once, model latency {delay_ms} ms",
        [s["t"] for s in samples],
        {
            "loops in flight": [s["in_flight"] for s in samples],
            "RSS (MB)": [s["rss_mb"] for s in samples],
            "threads": [s["threads"] for s in samples],
        },
        xlabel="seconds since the loops were sent",
    )
    return {
        "loops_sent": loops,
        "delay_ms": delay_ms,
        "held": held,
        "held_ratio": round(held / loops, 3),
        "failed": failed,
        "peak_threads": max(s["threads"] for s in samples),
        "rss_start_mb": round(rss_start_kb / 1024, 1),
        "rss_warm_mb": round(warm_mb, 1),
        "rss_peak_mb": round(peak_mb, 1),
        "rss_per_loop_mb": round((peak_mb - warm_mb) / max(held, 1), 3),
        "elapsed_s": round(elapsed, 1),
        "worker_cpu_s": round(cpu, 1),
        "worker_cpu_ms_per_loop": round(cpu / loops * 1000, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--loops", type=int, default=500)
    parser.add_argument("--delay-ms", type=int, default=1000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="agentmesh-loops-") as tmp:
        print(json.dumps(bench_loops(Path(tmp), args.loops, args.delay_ms), indent=2))


if __name__ == "__main__":
    main()
