"""``make bench``: performance as ratios against a baseline measured in the same run.

Machines here are noisy, so every figure that matters is a ratio of two things
measured back to back on the same machine:

- dispatch: one subtask round trip through agentmesh's path (our Celery app
  factory, our result keys, the planner's wait) against raw Celery's
  ``delay().get()`` with a Redis result backend; both run a no-op on a threads-pool
  worker;
- concurrency: one worker process holding many agent loops whose every model call
  takes ``--delay-ms``; the ratio is the loops it held at once over the loops sent,
  and its resident memory is reported at that load;
- end to end: one task from API submission to ``succeeded`` with the scripted model
  at 0 ms delay, with tracing exported to a real collector and without; the ratio
  is the cost of tracing.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx

from tests.support.mesh import BIN, LocalMesh, Proc, local_mesh, wait_until


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def _p50(xs: list[float]) -> float:
    return statistics.median(xs)


def bench_end_to_end(mesh: LocalMesh, n: int) -> dict[str, Any]:
    times = []
    for i in range(n):
        start = time.perf_counter()
        task = httpx.post(f"{mesh.api_url}/tasks", json={"text": f"bench task {i}"}).json()
        while task["status"] not in {"succeeded", "failed"}:
            time.sleep(0.01)
            task = httpx.get(f"{mesh.api_url}/tasks/{task['id']}").json()
        assert task["status"] == "succeeded", task
        times.append(time.perf_counter() - start)
    return {
        "tasks": n,
        "p50_s": round(_p50(times), 3),
        "min_s": round(min(times), 3),
        "max_s": round(max(times), 3),
    }


def bench_concurrency(root: Path, loops: int, delay_ms: int) -> dict[str, Any]:
    """One researcher process, ``loops`` subtasks at once, each model call ``delay_ms``."""
    with local_mesh(root, researchers=0, coders=0, llm_delay_ms=delay_ms) as mesh:
        worker = mesh.start_worker("researcher", AGENTMESH_WORKER_CONCURRENCY=str(loops))
        idle_rss = _rss_mb(worker.pid)
        r = mesh.redis()
        from agentmesh_shared.celery_app import create_celery_app
        from agentmesh_shared.models import TASK_NAME_BY_ROLE, Role, SubtaskMessage
        from agentmesh_shared.settings import load_settings

        app = create_celery_app(load_settings(redis_url=mesh.redis_url))
        start = time.perf_counter()
        ids = []
        for i in range(loops):
            msg = SubtaskMessage(
                task_id="bench",
                subtask_id=f"bench-{i}",
                role=Role.RESEARCHER,
                instruction=f"concurrency probe {i}",
                max_steps=5,
                deadline=time.time() + 600,
            )
            app.send_task(
                TASK_NAME_BY_ROLE[Role.RESEARCHER],
                args=[msg.model_dump(mode="json")],
                queue="research",
            )
            ids.append(msg.subtask_id)
        peak_in_flight = 0
        peak_rss = idle_rss
        while True:
            done = sum(1 for i in ids if r.exists(f"agentmesh:subtask:{i}:result"))
            info = r.hget("agentmesh:workers", "researcher-1")
            if info:
                peak_in_flight = max(peak_in_flight, json.loads(info)["in_flight"])
            peak_rss = max(peak_rss, _rss_mb(worker.pid))
            if done == loops:
                break
            if time.perf_counter() - start > 600:
                raise RuntimeError(f"only {done}/{loops} subtasks finished")
            time.sleep(0.2)
        elapsed = time.perf_counter() - start
        # Each researcher loop makes 3 model calls, so a loop takes >= 3 * delay.
        serial = loops * 3 * delay_ms / 1000
        return {
            "loops_sent": loops,
            "delay_ms": delay_ms,
            "peak_in_flight": peak_in_flight,
            "held_ratio": round(peak_in_flight / loops, 3),
            "elapsed_s": round(elapsed, 2),
            "speedup_vs_serial": round(serial / elapsed, 1),
            "rss_idle_mb": round(idle_rss, 1),
            "rss_peak_mb": round(peak_rss, 1),
        }


_RAW_APP = """
from celery import Celery
app = Celery("raw", broker="{broker}", backend="{broker}")
app.conf.update(task_serializer="json", accept_content=["json"], worker_prefetch_multiplier=1, task_acks_late=True)
@app.task(name="noop")
def noop(x):
    return x
"""


def bench_dispatch(root: Path, n: int) -> dict[str, Any]:
    """Raw Celery no-op round trip vs the same no-op through agentmesh's dispatch path."""
    with local_mesh(root, researchers=0, coders=0) as mesh:
        (root / "rawbench.py").write_text(_RAW_APP.format(broker=mesh.redis_url))
        raw_worker = Proc(
            "raw-worker",
            [
                str(BIN / "celery"),
                "-A",
                "rawbench",
                "worker",
                "--pool=threads",
                "-c",
                "4",
                "-Q",
                "celery",
                "--without-gossip",
                "--without-mingle",
                "-l",
                "WARNING",
            ],
            {**mesh.env(), "PYTHONPATH": str(root)},
            root / "raw-worker.log",
        ).start()
        ours = Proc(
            "ours-worker",
            [sys.executable, "-m", "tests.bench.noop_worker"],
            mesh.env(
                AGENTMESH_HEARTBEAT_FILE=str(root / "noop.hb"), AGENTMESH_WORKER_CONCURRENCY="4"
            ),
            root / "ours-worker.log",
        ).start()
        mesh.procs["raw-worker"], mesh.procs["ours-worker"] = raw_worker, ours
        wait_until((root / "noop.hb").exists, "the agentmesh no-op worker", timeout=60)
        sys.path.insert(0, str(root))
        import rawbench  # type: ignore[import-not-found]

        from tests.bench.noop_worker import round_trip

        rawbench.noop.delay(0).get(timeout=30)
        round_trip(mesh.redis_url, "warmup")
        raw, mine = [], []
        for i in range(n):
            t = time.perf_counter()
            rawbench.noop.delay(i).get(timeout=30)
            raw.append(time.perf_counter() - t)
            t = time.perf_counter()
            round_trip(mesh.redis_url, f"d{i}")
            mine.append(time.perf_counter() - t)
        return {
            "round_trips": n,
            "raw_celery_p50_ms": round(_p50(raw) * 1000, 2),
            "agentmesh_p50_ms": round(_p50(mine) * 1000, 2),
            "ratio": round(_p50(mine) / _p50(raw), 2),
        }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tasks", type=int, default=10)
    parser.add_argument("--loops", type=int, default=100)
    parser.add_argument("--delay-ms", type=int, default=1000)
    parser.add_argument("--round-trips", type=int, default=200)
    args = parser.parse_args()
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="agentmesh-bench-") as tmp:
        root = Path(tmp)
        for tracing in (False, True):
            where = root / f"e2e-tracing-{tracing}"
            where.mkdir()
            with local_mesh(where, tracing=tracing) as mesh:
                bench_end_to_end(mesh, 2)  # warm-up: model weights, connections
                results[f"end_to_end_tracing_{'on' if tracing else 'off'}"] = bench_end_to_end(
                    mesh, args.tasks
                )
        results["tracing_overhead_ratio"] = round(
            results["end_to_end_tracing_on"]["p50_s"] / results["end_to_end_tracing_off"]["p50_s"],
            3,
        )
        (root / "dispatch").mkdir()
        results["dispatch"] = bench_dispatch(root / "dispatch", args.round_trips)
        (root / "conc").mkdir()
        results["concurrency"] = bench_concurrency(root / "conc", args.loops, args.delay_ms)
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    threading.excepthook = lambda a: None
    main()
