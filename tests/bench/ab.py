"""Compare two settings of the mesh at N tasks at once, side by side.

This machine's own speed drifts by tens of percent within an hour, so two N = 100
figures taken at different times say little about a change. This runs two local
meshes at once (the effective-concurrency set-up: 2 researchers, 2 coders, the API
and one planner, 1 s model calls) and sends batches to them alternately (A, B, B, A,
...), so a drift hits both sides alike; it prints each batch and the medians.

    python -m tests.bench.ab --reps 4 --a AGENTMESH_GIL_SWITCH_INTERVAL_MS=0.1 --b ""

``--a``/``--b`` are comma-separated ``NAME=value`` environment settings given to every
process of that side's mesh. ``--planners-a``/``--planners-b`` set how many planner
processes a side runs besides the API replica, and ``--api-only-a``/``--api-only-b``
make that side's API replica leave planning to them. To compare two versions of the code, point one side's
``PYTHONPATH`` at a worktree's source folders, e.g.
``--b PYTHONPATH=/tmp/base/shared/src:/tmp/base/orchestrator/src:...`` after
``git worktree add /tmp/base <commit>``.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path

from tests.bench.planning import effective_mesh, run_batch, run_task
from tests.support.mesh import LocalMesh


def _settings(spec: str) -> dict[str, str]:
    pairs = [item for item in spec.split(",") if item]
    bad = [item for item in pairs if "=" not in item]
    if bad:
        msg = f"expected NAME=value, got {bad}"
        raise argparse.ArgumentTypeError(msg)
    return dict(item.split("=", 1) for item in pairs)


def _start(
    stack: ExitStack,
    root: Path,
    side_env: dict[str, str],
    n: int,
    planners: int,
    api_only: bool,
) -> LocalMesh:
    root.mkdir()
    return stack.enter_context(
        effective_mesh(root, n, planners=planners, every_env=side_env, api_plans=not api_only)
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--a", type=_settings, default={}, help="NAME=value,... of side A")
    parser.add_argument("--b", type=_settings, default={}, help="NAME=value,... of side B")
    for side in ("a", "b"):
        parser.add_argument(f"--planners-{side}", type=int, default=1, help="planner processes")
        parser.add_argument(
            f"--api-only-{side}", action="store_true", help="the API replica does not plan"
        )
    parser.add_argument("--reps", type=int, default=4, help="batches per side")
    parser.add_argument("--tasks", type=int, default=100, help="tasks per batch (N)")
    args = parser.parse_args()
    if args.reps < 1 or args.tasks < 1:
        parser.error("--reps and --tasks must be at least 1")
    for side in ("a", "b"):
        planners, api_only = getattr(args, f"planners_{side}"), getattr(args, f"api_only_{side}")
        if planners < 0 or (api_only and planners < 1):
            parser.error(f"side {side.upper()} would have no planning replica")
    sides = {"A": args.a, "B": args.b}
    shapes = {
        "A": (args.planners_a, args.api_only_a),
        "B": (args.planners_b, args.api_only_b),
    }
    ratios: dict[str, list[float]] = {"A": [], "B": []}
    cpu: dict[str, list[float]] = {"A": [], "B": []}
    with tempfile.TemporaryDirectory(prefix="agentmesh-ab-") as tmp, ExitStack() as stack:
        meshes = {
            name: _start(stack, Path(tmp) / name, env, args.tasks, *shapes[name])
            for name, env in sides.items()
        }
        for rep in range(args.reps):
            for name in ("A", "B") if rep % 2 == 0 else ("B", "A"):
                mesh = meshes[name]
                alone = statistics.median(run_task(mesh.api, f"alone {rep} {i}") for i in range(3))
                batch = run_batch(mesh, args.tasks, f"{name} {rep}")
                ratio = alone / batch["wall_s"]
                ratios[name].append(ratio)
                cpu[name].append(sum(batch["cpu_ms_per_task"].values()))
                print(
                    f"{name} batch {rep + 1}: {batch['wall_s']} s, one task alone {alone:.2f} s, "
                    f"ratio {ratio:.3f}, {cpu[name][-1]:.0f} ms of CPU a task, "
                    f"{batch['statuses']}",
                    flush=True,
                )
                time.sleep(2)
    for name, env in sides.items():
        label = f"{name} {env or '(as is)'} {shape(*shapes[name])}"
        print(
            f"{label}: median ratio {statistics.median(ratios[name]):.3f} "
            f"(lowest {min(ratios[name]):.3f}, highest {max(ratios[name]):.3f}), "
            f"median {statistics.median(cpu[name]):.0f} ms of CPU a task"
        )


def shape(planners: int, api_only: bool) -> str:
    return f"[{'API only' if api_only else 'API planning'} + {planners} planner(s)]"


if __name__ == "__main__":
    main()
