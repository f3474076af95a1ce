"""Where a batch's CPU goes, by process and by library: the tool behind "what still
limits throughput" (docs/measurements.md).

``python -m tests.bench.profile [--tasks 100]`` starts the effective-concurrency set-up
(tests/bench/planning.py: 2 researchers, 2 coders, the API and a planner, 1 s model
calls) with ``tests/bench/profile_hook`` first on every process's ``PYTHONPATH``, runs
one batch unprofiled (each process's real CPU milliseconds a task), then the same
batch with every Python process profiled by yappi (CPU clock, every thread). A
profile gives each process's CPU in shares by library; the C functions a library
calls (sockets, ``json``, ``isinstance``) count for the library that called them.
Real milliseconds times shares give the table it prints and writes, with each
process's profile and its 40 costliest functions, into ``build/bench/profile/``.
"""

from __future__ import annotations

import argparse
import json
import os
import pstats
import re
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

from tests.bench.planning import effective_mesh, mesh_cpu_by_process, role_of, run_batch
from tests.support.mesh import wait_until

ROOT = Path(__file__).resolve().parents[2]
HOOK = Path(__file__).resolve().parent / "profile_hook"

# A function's library, by the first pattern its file's path matches (site-packages
# before the standard library, whose folder contains them).
LIBRARIES: list[tuple[str, re.Pattern[str]]] = [
    (label, re.compile(pattern))
    for label, pattern in [
        ("agentmesh", r"/agentmesh_[a-z]+/"),
        ("anthropic SDK", r"site-packages/anthropic/"),
        ("HTTP clients (httpx, httpcore, h11)", r"site-packages/(httpx2?|httpcore2?|h11|anyio)/"),
        ("Celery + kombu", r"site-packages/(celery|kombu|billiard|vine|amqp|click)/"),
        ("redis-py", r"site-packages/redis/"),
        ("OpenTelemetry", r"site-packages/opentelemetry"),
        ("pydantic", r"site-packages/pydantic"),
        ("ASGI (uvicorn, starlette, FastAPI)", r"site-packages/(uvicorn|starlette|fastapi)/"),
        ("ONNX Runtime, tokenizers, numpy", r"site-packages/(onnxruntime|tokenizers|numpy)/"),
        ("other packages", r"site-packages/"),
        ("Python standard library", r"/lib/python3\.\d+/"),
    ]
]
C_FUNCTION = "C functions called from C"

Key = tuple[str, int, str]


def library_of(filename: str) -> str | None:
    """The library of a Python function's file; None for a C function (no path)."""
    if "/" not in filename:
        return None
    for label, pattern in LIBRARIES:
        if pattern.search(filename):
            return label
    return "other"


def shares(stats: pstats.Stats) -> dict[str, float]:
    """Each library's share of a process's profiled CPU. A C function's own time is
    split over its callers in proportion to the time each call site spent in it, and
    counts for the caller's library."""
    table: dict[Key, Any] = stats.stats  # type: ignore[attr-defined]
    by_library: dict[str, float] = defaultdict(float)
    for (filename, _line, _name), (_cc, _nc, own, _cum, callers) in table.items():
        library = library_of(filename)
        if library is not None:
            by_library[library] += own
            continue
        spent = {caller: entry[2] for caller, entry in callers.items()}
        total = sum(spent.values())
        if total <= 0:
            by_library[C_FUNCTION] += own
            continue
        for caller, part in spent.items():
            by_library[library_of(caller[0]) or C_FUNCTION] += own * part / total
    whole = sum(by_library.values()) or 1.0
    return {k: v / whole for k, v in sorted(by_library.items(), key=lambda kv: -kv[1])}


def profile(tasks: int, out: Path) -> dict[str, Any]:
    out.mkdir(parents=True, exist_ok=True)
    stale = [*out.glob("*.pstat"), *out.glob("*.armed"), *out.glob("*.txt")]
    for old in [*stale, out / "start", out / "stop"]:
        old.unlink(missing_ok=True)
    python_path = os.pathsep.join([str(HOOK), str(ROOT)])
    every_env = {"PYTHONPATH": python_path, "AGENTMESH_BENCH_PROFILE_DIR": str(out)}
    with (
        tempfile.TemporaryDirectory(prefix="agentmesh-profile-") as tmp,
        effective_mesh(Path(tmp), tasks, every_env=every_env) as mesh,
    ):
        before = mesh_cpu_by_process(mesh)
        real = run_batch(mesh, tasks, "unprofiled")
        after = mesh_cpu_by_process(mesh)
        # Each process's own CPU milliseconds a task (its session's children included).
        own_ms = {name: (after[name] - before.get(name, 0.0)) * 1000 / tasks for name in after}
        print(f"unprofiled: {json.dumps(real)}", file=sys.stderr, flush=True)
        pids = {p.pid: name for name, p in mesh.procs.items() if p.alive()}
        (out / "start").touch()
        time.sleep(1)
        profiled = run_batch(mesh, tasks, "profiled")
        print(f"profiled: {json.dumps(profiled)}", file=sys.stderr, flush=True)
        (out / "stop").touch()

        def saved() -> bool:
            armed = [int(p.stem) for p in out.glob("*.armed")]
            return all((out / f"{pid}.pstat").exists() for pid in armed if pid in pids)

        wait_until(saved, "every profile to be saved", timeout=120)
    by_role: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
    for path in sorted(out.glob("*.pstat")):
        name = pids.get(int(path.stem), f"pid {path.stem}")
        stats = pstats.Stats(str(path))
        with (out / f"{name}.txt").open("w") as text:
            stats.stream = text  # type: ignore[attr-defined]
            stats.sort_stats("cumulative").print_stats(40)
        ms = own_ms.get(name)
        if ms is None:
            continue
        for library, share in shares(stats).items():
            by_role[role_of(name)][library] += ms * share
    result = {
        "tasks": tasks,
        "unprofiled": real,
        "cpu_ms_per_task": {
            role: {k: round(v, 1) for k, v in sorted(libs.items(), key=lambda kv: -kv[1])}
            for role, libs in sorted(by_role.items(), key=lambda kv: -sum(kv[1].values()))
        },
    }
    (out / "summary.json").write_text(json.dumps(result, indent=2) + "\n")
    return result


def render(result: dict[str, Any]) -> str:
    lines = [
        f"CPU ms a task, batch of {result['tasks']} "
        f"(wall {result['unprofiled']['wall_s']} s unprofiled), by process and library:",
    ]
    for role, libs in result["cpu_ms_per_task"].items():
        total = sum(libs.values())
        parts = ", ".join(f"{lib} {ms}" for lib, ms in libs.items() if ms >= 0.5)
        lines.append(f"- {role}: {total:.1f} ms = {parts}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", type=int, default=100)
    parser.add_argument("--out", type=Path, default=ROOT / "build" / "bench" / "profile")
    args = parser.parse_args(argv)
    print(render(profile(args.tasks, args.out)))


if __name__ == "__main__":
    main()
