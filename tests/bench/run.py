"""``make bench``: performance as ratios against a baseline measured in the same run.

Machines here are noisy, so every figure that matters is a ratio of two things
measured back to back on the same machine:

- embedding: the memory service's embedder, int8, against its own float32 graph:
  CPU time a text in batches of 16 (and how close the vectors stay);
- dispatch: one subtask round trip through agentmesh's path (our Celery app
  factory, the hand-off's result publication and wake-up, a planner's claim of the
  woken task) against raw Celery's ``delay().get()`` with a Redis result backend;
  both run a no-op on a threads-pool worker;
- loops: one worker process holding many agent loops whose every model call takes
  ``--delay-ms``; the ratio is the loops it held at once over its concurrency, and
  its resident memory per loop is reported at that load (tests/bench/loops.py);
- run_python: a program run through a sandbox replica (unix socket, per-run
  supervisor, Landlock) against the old launch inside the coder (a limited child
  of the worker); the ratio is the cost of the sandbox hop;
- tracing, effective concurrency, planning scaling: see tests/bench/planning.py;
- images and start-up, where Docker and built images are present: each service
  image's size (tests/bench/images.py) and `make up` to healthy
  (tests/bench/startup.py);
- dashboard: the page's routes and its waterfall in Chromium, with 1,000 stored
  tasks and a 500-span trace against 10 tasks and 5 spans (tests/bench/dashboard.py);
- model gateway: one Messages-API call with the real SDK to the scripted model
  (0 ms delay) through the model gateway against the same call made directly, one of
  each in turn; the ratio is the gateway's cost on a call's round trip;
- mcp: an MCP tool call through the worker's hub against the same work as a built-in
  tool, one of each in turn (tests/bench/mcp.py); the ratio is the MCP hop's cost.

``--figures`` picks which to run (default all); each figure also becomes a PNG in
build/bench/, and the whole result is written to build/bench/results.json. The result
starts with the host (tests/bench/host.py): its CPU model, vector extensions and a
fixed Python workload's time, at the start and at the end, so that runs on different
machines are not compared as if they were one.

Not a figure but the tool to explain one: ``python -m tests.bench.timeline`` runs the
effective-concurrency set-up and shows, round by round, where a batch's seconds went
and which process used the CPU meanwhile; ``python -m tests.bench.profile`` shows which
libraries of each process spend a batch's CPU (a yappi profile of every process).
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

from tests.bench import host, planning, plots
from tests.bench.dashboard import bench_dashboard
from tests.bench.images import ROOT, bench_images
from tests.bench.loops import bench_loops
from tests.bench.mcp import bench_mcp
from tests.bench.startup import bench_startup
from tests.support.mesh import BIN, GATEWAY_TOKENS, LocalMesh, Proc, local_mesh, wait_until


def _p50(xs: list[float]) -> float:
    return statistics.median(xs)


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
        # The round trip plays the planner replica itself: no other may claim its tasks.
        mesh.procs.pop("orchestrator").stop()
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
                "coder",
                AGENTMESH_HEARTBEAT_FILE=str(root / "noop.hb"),
                AGENTMESH_WORKER_CONCURRENCY="4",
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


_IN_PROCESS_LAUNCHER = """
import json, os, resource, sys
sys.path.insert(0, os.path.dirname(sys.argv[1]))
import supervisor
cfg = json.loads(sys.argv[2])
for name, value in cfg["rlimits"].items():
    resource.setrlimit(getattr(resource, name), (value, value))
supervisor.socket_filter()
os.execv(sys.executable, [sys.executable, "-I", "-B", *cfg["argv"]])
"""


def bench_embedding(passes: int) -> dict[str, Any]:
    """The memory service's embedder (int8) against its float32 graph: a batch of 16
    memory-search-like texts through each in turn, CPU time per text."""
    import numpy as np
    from agentmesh_orchestrator.embedding import MiniLMEmbedder

    texts = [f"Write and run a program for: batch of 100 ({i % 5}) {i}" for i in range(16)]
    int8, f32 = MiniLMEmbedder(), MiniLMEmbedder(quantized=False)
    a, b = np.asarray(int8.embed(texts)), np.asarray(f32.embed(texts))
    times: dict[str, list[float]] = {"int8": [], "float32": []}
    for _ in range(passes):
        for name, embedder in (("int8", int8), ("float32", f32)):
            t = time.process_time()
            embedder.embed(texts)
            times[name].append((time.process_time() - t) / len(texts))
    return {
        "texts_per_pass": len(texts),
        "passes": passes,
        "int8_ms_per_text": round(_p50(times["int8"]) * 1000, 2),
        "float32_ms_per_text": round(_p50(times["float32"]) * 1000, 2),
        "ratio": round(_p50(times["int8"]) / _p50(times["float32"]), 3),
        "min_cosine_int8_to_float32": round(float((a * b).sum(axis=1).min()), 4),
    }


def bench_sandbox(root: Path, n: int) -> dict[str, Any]:
    """``run_python`` through a sandbox replica (unix socket, supervisor, Landlock)
    against the old launch inside the coder: a limited ``python`` child of the
    worker (rlimits and the socket filter set by a launcher before ``exec``)."""
    import subprocess

    from agentmesh_coder import supervisor
    from agentmesh_coder.sandbox import Sandbox
    from agentmesh_shared.settings import load_settings

    program = "print(sum(range(1000)))\n"
    mesh = LocalMesh(root=root)
    try:
        mesh.start_sandbox()
        sandbox = Sandbox(load_settings(sandbox_socket_dir=root / "sandbox-sockets"))
        workdir = root / "in-process"
        workdir.mkdir()
        (workdir / "main.py").write_text(program)
        cfg = json.dumps(
            {
                "rlimits": {"RLIMIT_CPU": 10, "RLIMIT_AS": 256 << 20, "RLIMIT_NOFILE": 256},
                "argv": ["main.py"],
            }
        )
        launch = [sys.executable, "-I", "-S", "-c", _IN_PROCESS_LAUNCHER, supervisor.__file__, cfg]

        def in_process() -> str:
            return subprocess.run(
                launch, cwd=workdir, capture_output=True, text=True, check=True
            ).stdout

        def through_sandbox() -> str:
            return sandbox.run_python("main.py", files={"main.py": program}).stdout

        assert in_process() == through_sandbox() == "499500\n"
        old, new = [], []
        for _ in range(n):
            t = time.perf_counter()
            in_process()
            old.append(time.perf_counter() - t)
            t = time.perf_counter()
            through_sandbox()
            new.append(time.perf_counter() - t)
        return {
            "runs": n,
            "in_process_p50_ms": round(_p50(old) * 1000, 1),
            "sandbox_p50_ms": round(_p50(new) * 1000, 1),
            "ratio": round(_p50(new) / _p50(old), 2),
        }
    finally:
        mesh.stop()


def bench_gateway(root: Path, n: int) -> dict[str, Any]:
    """The same model call direct to the scripted model and through the gateway."""
    import anthropic

    mesh = LocalMesh(root=root)
    try:
        mesh.start_redis()
        mesh.start_llm()
        gateway = mesh.start_gateway()
        direct = anthropic.Anthropic(
            api_key="scripted-test-key", base_url=f"http://127.0.0.1:{mesh.llm_port}"
        )
        via = anthropic.Anthropic(api_key=GATEWAY_TOKENS["coder"], base_url=gateway)
        messages: Any = [{"role": "user", "content": "bench the gateway"}]

        def call(client: anthropic.Anthropic) -> float:
            t = time.perf_counter()
            client.messages.create(model="m", max_tokens=64, messages=messages)
            return time.perf_counter() - t

        for _ in range(10):  # warm-up: connections on both paths
            call(direct), call(via)
        straight, gated = [], []
        for _ in range(n):
            straight.append(call(direct))
            gated.append(call(via))
        return {
            "calls": n,
            "direct_p50_ms": round(_p50(straight) * 1000, 2),
            "gateway_p50_ms": round(_p50(gated) * 1000, 2),
            "ratio": round(_p50(gated) / _p50(straight), 2),
        }
    finally:
        mesh.stop()


FIGURES = (
    "embedding",
    "dispatch",
    "tracing",
    "loops",
    "sandbox",
    "gateway",
    "effective",
    "scaling",
    "images",
    "dashboard",
    "mcp",
)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--figures", default=",".join(FIGURES), help="comma-separated subset")
    parser.add_argument("--loops", type=int, default=500)
    parser.add_argument("--delay-ms", type=int, default=1000)
    parser.add_argument("--round-trips", type=int, default=1000)
    parser.add_argument("--sandbox-runs", type=int, default=50)
    parser.add_argument("--tracing-pairs", type=int, default=300)
    parser.add_argument("--batch-sizes", default="10,100,1000")
    parser.add_argument(
        "--batch-repeats", type=int, default=5, help="batches per N <= 100 (median reported)"
    )
    parser.add_argument("--scaling-tasks", type=int, default=240)
    parser.add_argument("--scaling-threads", type=int, default=8)
    parser.add_argument("--model-calls", type=int, default=200)
    parser.add_argument("--dashboard-requests", type=int, default=50)
    parser.add_argument("--mcp-calls", type=int, default=300)
    parser.add_argument("--embedding-passes", type=int, default=200)
    args = parser.parse_args()
    if args.batch_repeats < 1:
        parser.error("--batch-repeats must be at least 1")
    wanted = set(args.figures.split(","))
    unknown = wanted - set(FIGURES)
    if unknown:
        parser.error(f"unknown figures {sorted(unknown)}; choose from {', '.join(FIGURES)}")
    # The machine, first: figures of runs on different hosts are not comparable.
    results: dict[str, Any] = {"host": host.describe()}
    with tempfile.TemporaryDirectory(prefix="agentmesh-bench-") as tmp:
        root = Path(tmp)
        if "dispatch" in wanted:
            (root / "dispatch").mkdir()
            results["dispatch"] = bench_dispatch(root / "dispatch", args.round_trips)
            plots.dispatch(results["dispatch"])
        if "tracing" in wanted:
            (root / "tracing").mkdir()
            results["tracing"] = planning.bench_tracing_interleaved(
                root / "tracing", args.tracing_pairs
            )
            plots.tracing(results["tracing"])
        if "loops" in wanted:
            (root / "loops").mkdir()
            results["loops"] = bench_loops(root / "loops", args.loops, args.delay_ms)
        if "sandbox" in wanted:
            (root / "sandbox").mkdir()
            results["run_python"] = bench_sandbox(root / "sandbox", args.sandbox_runs)
        if "gateway" in wanted:
            (root / "gateway").mkdir()
            results["model_gateway"] = bench_gateway(root / "gateway", args.model_calls)
        if "mcp" in wanted:
            results["mcp_tool_call"] = bench_mcp(args.mcp_calls)
            plots.mcp(results["mcp_tool_call"])
        if "effective" in wanted:
            (root / "effective").mkdir()
            ns = [int(n) for n in args.batch_sizes.split(",")]
            results["effective_concurrency"] = planning.bench_effective_concurrency(
                root / "effective", ns, args.delay_ms, repeats=args.batch_repeats
            )
            plots.effective_concurrency(results["effective_concurrency"])
        if "scaling" in wanted:
            (root / "scaling").mkdir()
            results["planning_scaling"] = planning.bench_planning_scaling(
                root / "scaling", [1, 2, 3], args.scaling_tasks, args.delay_ms, args.scaling_threads
            )
            plots.planning_scaling(results["planning_scaling"])
        if "dashboard" in wanted:
            (root / "dashboard").mkdir()
            results["dashboard"] = bench_dashboard(root / "dashboard", args.dashboard_requests)
            plots.dashboard(results["dashboard"])
    if "embedding" in wanted:
        results["embedding"] = bench_embedding(args.embedding_passes)
    if "images" in wanted:
        if (ROOT / "build" / "images.env").exists():
            results["images"] = bench_images()
            results["startup"] = bench_startup()
        else:
            results["images"] = results["startup"] = (
                "skipped: no build/images.env (run make images)"
            )
    results["host"]["python_ms_at_end"] = host.python_ms()
    plots.OUT.mkdir(parents=True, exist_ok=True)
    (plots.OUT / "results.json").write_text(json.dumps(results, indent=2))
    shown = {
        k: ({kk: vv for kk, vv in v.items() if kk != "samples"} if isinstance(v, dict) else v)
        for k, v in results.items()
    }
    print(json.dumps(shown, indent=2))


if __name__ == "__main__":
    threading.excepthook = lambda a: None
    main()
