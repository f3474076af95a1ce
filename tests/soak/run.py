"""``make soak``: hundreds of tasks through several replicas while workers are killed.

Every task must end exactly once (one terminal event, a terminal record), none may
be stuck, and the memory of a worker that is never killed must stay flat. Workers
are SIGKILLed at random mid-run and replaced, as a crashing container would be.
Planning runs on ``--planners`` replicas (the API process plans nothing); one of them
is SIGKILLed a third of the way through the submissions and not replaced, so the
other takes over its tasks.
Prints a JSON summary and exits 1 if any task was lost or ended twice.
"""

from __future__ import annotations

import argparse
import json
import random
import signal
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

from tests.support.mesh import LocalMesh, local_mesh


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return round(int(line.split()[1]) / 1024, 1)
    return 0.0


def killer(
    mesh: LocalMesh, stop: threading.Event, every_s: float, immune: set[str], kills: list[str]
) -> None:
    rng = random.Random(7)
    while not stop.wait(every_s):
        candidates = [
            n
            for n, p in mesh.procs.items()
            if n.startswith(("researcher", "coder")) and n not in immune and p.alive()
        ]
        if not candidates:
            continue
        victim = rng.choice(candidates)
        mesh.procs[victim].signal(signal.SIGKILL)
        kills.append(victim)
        mesh.procs.pop(victim).stop()
        mesh.start_worker(victim.split("-")[0])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tasks", type=int, default=300)
    parser.add_argument("--researchers", type=int, default=3)
    parser.add_argument("--coders", type=int, default=2)
    parser.add_argument("--kill-every-s", type=float, default=8.0)
    parser.add_argument("--delay-ms", type=int, default=150)
    parser.add_argument("--rate", type=float, default=4.0, help="tasks submitted per second")
    parser.add_argument("--timeout-s", type=float, default=1800)
    parser.add_argument("--planners", type=int, default=2)
    args = parser.parse_args()

    with (
        tempfile.TemporaryDirectory(prefix="agentmesh-soak-") as tmp,
        local_mesh(
            Path(tmp),
            researchers=args.researchers,
            coders=args.coders,
            llm_delay_ms=args.delay_ms,
            tracing=False,
        ) as mesh,
    ):
        mesh.procs.pop("orchestrator").stop()
        mesh.start_orchestrator(AGENTMESH_PLANNER_CONCURRENCY="0")  # the API alone
        planners = [mesh.start_planner(f"planner-{k + 1}") for k in range(args.planners)]
        immune = {"researcher-1"}  # never killed: its memory is the one that must stay flat
        for _ in range(3):  # warm up: model weights, connections
            mesh.api.post("/tasks", json={"text": "warm-up"})
        time.sleep(10)
        rss_start = rss_mb(mesh.procs["researcher-1"].pid)
        stop = threading.Event()
        kills: list[str] = []
        chaos = threading.Thread(
            target=killer, args=(mesh, stop, args.kill_every_s, immune, kills), daemon=True
        )
        started = time.monotonic()
        chaos.start()
        ids = []
        for i in range(args.tasks):
            reply = mesh.api.post("/tasks", json={"text": f"soak task {i}"}, timeout=30)
            reply.raise_for_status()
            ids.append(reply.json()["id"])
            if i == args.tasks // 3 and len(planners) > 1:
                planners[0].signal(signal.SIGKILL)  # one planning replica dies for good
            time.sleep(1 / args.rate)
        deadline = time.monotonic() + args.timeout_s
        records: dict[str, dict[str, Any]] = {}
        while time.monotonic() < deadline:
            records = {i: mesh.api.get(f"/tasks/{i}", timeout=30).json() for i in ids}
            if all(r["status"] in {"succeeded", "failed", "cancelled"} for r in records.values()):
                break
            time.sleep(5)
        stop.set()
        chaos.join()
        elapsed = time.monotonic() - started
        rss_end = rss_mb(mesh.procs["researcher-1"].pid)

        r = mesh.redis()
        terminal_events: Counter[str] = Counter()
        resent = 0
        taken_over = 0
        for task_id in ids:
            for _eid, fields in r.xrange(f"agentmesh:task:{task_id}:events"):
                kind = json.loads(fields["event"])["kind"]
                if kind in {"task.succeeded", "task.failed", "task.cancelled"}:
                    terminal_events[task_id] += 1
                resent += kind == "subtask.resent"
                taken_over += kind == "task.resumed"
        absorbed = sum(
            p.log_path.read_text().count("absorbed")
            for n, p in mesh.procs.items()
            if n.startswith(("researcher", "coder"))
        )
        statuses = Counter(rec["status"] for rec in records.values())
        stuck = [
            i
            for i, rec in records.items()
            if rec["status"] not in {"succeeded", "failed", "cancelled"}
        ]
        twice = [i for i in ids if terminal_events[i] > 1]
        never = [i for i in ids if terminal_events[i] == 0]
        summary = {
            "tasks": len(ids),
            "statuses": dict(statuses),
            "worker_kills": len(kills),
            "planner_replicas": args.planners,
            "planner_kills": 1 if args.planners > 1 else 0,
            "tasks_taken_over_from_the_killed_planner": taken_over,
            "tasks_lost_or_stuck": len(stuck) + len(never),
            "tasks_ended_twice": len(twice),
            "subtasks_resent_after_a_kill": resent,
            "duplicate_deliveries_absorbed_in_logs_of_live_workers": absorbed,
            "failed_errors": Counter(
                (rec.get("error") or "")[:80]
                for rec in records.values()
                if rec["status"] == "failed"
            ),
            "immune_worker_rss_mb": {"start": rss_start, "end": rss_end},
            "elapsed_s": round(elapsed, 1),
        }
        print(json.dumps(summary, indent=2))
        raise SystemExit(1 if stuck or never or twice else 0)


if __name__ == "__main__":
    main()
