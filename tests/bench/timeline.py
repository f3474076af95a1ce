"""Where a batch's seconds go: each task's path through the mesh, round by round.

The effective-concurrency set-up (tests/bench/planning.py: 2 researchers, 2 coders,
the API replica and one planner process, model calls of ``--delay-ms``) runs one task
alone and then a batch of ``--tasks`` at once, ``--batches`` times. The scripted model
logs each request as it arrives (``--arrivals``): a loop's next call arrives when the
loop has done the work of its previous reply, so for every task the time from one of
its calls to the next, less the model's delay, is what that round cost it. The task
records add when each subtask was created, dispatched, started and finished.

For each batch it prints, in seconds after the first submission, each event's time
for the task alone and the batch's lowest, median, 90th percentile and highest;
then the last task's own path; then each process's CPU, in per cent of one core,
every 0.1 s (children's CPU counted when they are reaped: the sandbox's runs).

    uv run python -m tests.bench.timeline --tasks 100 --batches 2

The same figures go to ``build/bench/timeline.json``.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import statistics
import sys
import threading
import time
from pathlib import Path
from typing import Any

from agentmesh_shared import keys

from tests.bench.planning import effective_mesh, mesh_cpu_by_process, run_batch, run_task
from tests.support.mesh import LocalMesh

OUT = Path(__file__).resolve().parents[2] / "build" / "bench"
SUBTASK_TIMES = ("created_at", "dispatched_at", "started_at", "finished_at")
_LABEL = re.compile(r"timeline \d+ (?:\d+|alone)\b")


def _arrivals(path: Path, since: float) -> dict[str, list[tuple[str, float]]]:
    """Each task label's model calls from ``since``: ("coder 2", time), in order."""
    calls: dict[str, list[tuple[str, float]]] = {}
    for line in path.read_text().splitlines():
        entry = json.loads(line)
        found = _LABEL.search(entry["subject"])
        if found is None or entry["at"] < since:
            continue
        name = f"{entry['script']} call {entry['results'] + 1}"
        calls.setdefault(found.group(0), []).append((name, entry["at"]))
    return calls


def _records(mesh: LocalMesh, since: float) -> dict[str, dict[str, Any]]:
    """The records of the tasks created from ``since``, by their text."""
    r = mesh.redis()
    ids = [str(i) for i in r.zrangebyscore(keys.TASK_INDEX, since, "+inf")]
    raws = r.mget([keys.task(i) for i in ids]) if ids else []
    records = [json.loads(raw) for raw in raws if raw]
    return {str(rec["text"]): rec for rec in records}


def _events(record: dict[str, Any], calls: list[tuple[str, float]]) -> dict[str, float]:
    """A task's events, in seconds after its submission."""
    start = float(record["created_at"])
    out = {"submitted": 0.0, "succeeded": float(record["updated_at"]) - start}
    for name, at in calls:
        out[name] = at - start
    for sub in record.get("subtasks", []):
        for field in SUBTASK_TIMES:
            if sub.get(field):
                out[f"{sub['role']} {field.removesuffix('_at')}"] = float(sub[field]) - start
    return out


class CpuSampler(threading.Thread):
    """Each mesh process's CPU seconds, every ``interval_s``."""

    def __init__(self, mesh: LocalMesh, interval_s: float = 0.1) -> None:
        super().__init__(daemon=True)
        self.mesh = mesh
        self.interval_s = interval_s
        self.samples: list[tuple[float, dict[str, float]]] = []
        self._done = threading.Event()

    def run(self) -> None:
        while not self._done.is_set():
            self.samples.append((time.time(), mesh_cpu_by_process(self.mesh)))
            self._done.wait(self.interval_s)

    def stop(self) -> list[dict[str, Any]]:
        """Per-cent of one core each process used in each interval."""
        self._done.set()
        self.join()
        rows = []
        for (t0, a), (t1, b) in zip(self.samples, self.samples[1:], strict=False):
            rows.append(
                {
                    "at": t0,
                    "percent": {n: round((b[n] - a.get(n, b[n])) / (t1 - t0) * 100) for n in b},
                }
            )
        return rows


def one_batch(mesh: LocalMesh, arrivals: Path, n: int, batch: int) -> dict[str, Any]:
    since = time.time()
    alone_s = run_task(mesh.api, f"timeline {batch} alone")
    sampler = CpuSampler(mesh)
    sampler.start()
    outcome = run_batch(mesh, n, f"timeline {batch}")
    cpu = sampler.stop()
    calls = _arrivals(arrivals, since)
    records = _records(mesh, since)
    alone_label = f"timeline {batch} alone"
    alone = _events(records.pop(alone_label), calls.get(alone_label, []))
    first = min(float(r["created_at"]) for r in records.values())
    per_task: dict[str, dict[str, float]] = {}
    for label, r in records.items():
        events = _events(r, calls.get(label, []))
        offset = float(r["created_at"]) - first
        per_task[label] = {k: round(v + offset, 3) for k, v in events.items()}
    names = sorted(
        {k for e in per_task.values() for k in e},
        key=lambda k: statistics.median(e[k] for e in per_task.values() if k in e),
    )
    table = []
    for name in names:
        times = sorted(e[name] for e in per_task.values() if name in e)
        table.append(
            {
                "event": name,
                "alone": round(alone[name], 3) if name in alone else None,
                "lowest": times[0],
                "median": round(statistics.median(times), 3),
                "p90": times[int(len(times) * 0.9)],
                "highest": times[-1],
                "tasks": len(times),
            }
        )
    last = max(per_task, key=lambda k: per_task[k]["succeeded"])
    return {
        "tasks": n,
        "alone_s": round(alone_s, 3),
        "wall_s": outcome["wall_s"],
        "ratio_to_n": round(alone_s / outcome["wall_s"], 3),
        "cpu_ms_per_task": outcome["cpu_ms_per_task"],
        "events": table,
        "last_task": dict(sorted(per_task[last].items(), key=lambda kv: kv[1])),
        "cpu_percent": [{"at": round(row["at"] - first, 2), **row["percent"]} for row in cpu],
    }


def show(result: dict[str, Any]) -> None:
    print(
        f"\n== {result['tasks']} tasks: wall {result['wall_s']} s, one alone "
        f"{result['alone_s']} s, ratio {result['ratio_to_n']}; CPU ms a task "
        f"{result['cpu_ms_per_task']}"
    )
    print(f"{'event':28} {'alone':>6} {'lowest':>7} {'median':>7} {'p90':>6} {'highest':>7}")
    for row in result["events"]:
        alone = f"{row['alone']:6.2f}" if row["alone"] is not None else "     -"
        print(
            f"{row['event']:28} {alone} {row['lowest']:7.2f} {row['median']:7.2f}"
            f" {row['p90']:6.2f} {row['highest']:7.2f}"
        )
    print("the last task:", ", ".join(f"{k} {v:.2f}" for k, v in result["last_task"].items()))
    names = sorted({k for row in result["cpu_percent"] for k in row if k != "at"})
    print("CPU, % of one core:  " + " ".join(f"{n[:11]:>11}" for n in names) + "   total")
    for row in result["cpu_percent"]:
        cells = [row.get(n, 0) for n in names]
        print(f"{row['at']:19.1f}  " + " ".join(f"{c:11d}" for c in cells) + f" {sum(cells):7d}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", type=int, default=100)
    parser.add_argument("--batches", type=int, default=2)
    parser.add_argument("--delay-ms", type=int, default=1000)
    args = parser.parse_args(argv)
    root = OUT / "timeline-run"
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    arrivals = root / "arrivals.jsonl"
    results = []
    with effective_mesh(root, args.tasks, args.delay_ms, llm_arrivals=arrivals) as mesh:
        for batch in range(args.batches):
            result = one_batch(mesh, arrivals, args.tasks, batch)
            show(result)
            results.append(result)
            sys.stdout.flush()
    (OUT / "timeline.json").write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
