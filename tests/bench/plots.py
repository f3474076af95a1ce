"""One PNG per bench figure, in build/bench/ (matplotlib, no display needed)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt

OUT = Path(__file__).resolve().parents[2] / "build" / "bench"


def _save(fig: Any, name: str) -> Path:
    OUT.mkdir(parents=True, exist_ok=True)
    path = OUT / name
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def effective_concurrency(result: dict[str, Any]) -> Path:
    rows = result["batches"]
    ns = [r["tasks"] for r in rows]
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    left.plot(ns, ns, "--", color="grey", label="ideal (= N)")
    left.plot(ns, [0.8 * n for n in ns], ":", color="grey", label="goal 0.8 N")
    measured = [r["effective_concurrency"] for r in rows]
    spread = [
        [
            m - n * r.get("ratio_range", [0, 0])[0]
            for m, n, r in zip(measured, ns, rows, strict=True)
        ],
        [
            n * r.get("ratio_range", [0, 0])[1] - m
            for m, n, r in zip(measured, ns, rows, strict=True)
        ],
    ]
    left.errorbar(
        ns,
        measured,
        yerr=[[max(0.0, v) for v in side] for side in spread],
        fmt="o-",
        capsize=4,
        label="measured (median batch; bars: lowest to highest)",
    )
    left.set(
        xscale="log",
        yscale="log",
        xlabel="tasks submitted at once (N)",
        ylabel="N x one task / wall time",
        title=f"Effective concurrency, model calls {result['delay_ms']} ms",
    )
    left.legend(loc="lower right")
    right.bar([str(n) for n in ns], [r["tasks_per_cpu_s"] or 0 for r in rows])
    right.set(
        xlabel="N",
        ylabel="tasks per CPU-second of the mesh",
        title="CPU cost per task (2-core machine)",
    )
    for i, r in enumerate(rows):
        right.annotate(f"{r['tasks_per_s']} tasks/s", (i, r["tasks_per_cpu_s"] or 0), ha="center")
    return _save(fig, "effective_concurrency.png")


def planning_scaling(result: dict[str, Any]) -> Path:
    rows = result["rows"]
    ks = [r["replicas"] for r in rows]
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(ks, ks, "--", color="grey", label="linear")
    ax.plot(ks, [r["speedup"] for r in rows], "o-", label="measured throughput / 1 replica")
    for r in rows:
        ax.annotate(f"eff. {r['efficiency']:.2f}", (r["replicas"], r["speedup"]))
    ax.set(
        xlabel="planning replicas",
        ylabel="speed-up",
        xticks=ks,
        title=f"Planning scaling ({result['threads_per_replica']} steps per replica)",
    )
    ax.legend()
    return _save(fig, "planning_scaling.png")


def dispatch(result: dict[str, Any]) -> Path:
    fig, ax = plt.subplots(figsize=(6, 4))
    names = ["raw Celery delay().get()", "agentmesh hand-off"]
    values = [result["raw_celery_p50_ms"], result["agentmesh_p50_ms"]]
    ax.bar(names, values, color=["grey", "tab:blue"])
    ax.set(ylabel="p50 round trip (ms)", title=f"Dispatch overhead: ratio {result['ratio']}")
    return _save(fig, "dispatch_overhead.png")


def tracing(result: dict[str, Any]) -> Path:
    fig, ax = plt.subplots(figsize=(6, 4))
    on, off = result["samples"]["on"], result["samples"]["off"]
    ax.boxplot([off, on], tick_labels=["tracing off", "tracing on"])
    low, high = result["paired_ci95"]
    ax.set(
        ylabel="task latency (s)",
        title=(
            f"Tracing on/off, median of pairs {result['paired_ratio']}\n"
            f"(95 % CI {low}-{high}), {result['pairs']} pairs"
        ),
    )
    return _save(fig, "tracing_overhead.png")


def plot_series(
    name: str,
    title: str,
    x: Sequence[float],
    series: dict[str, Sequence[float]],
    *,
    xlabel: str,
) -> Path:
    """Stacked line plots sharing one x axis: one panel per series."""
    OUT.mkdir(parents=True, exist_ok=True)
    fig, axes = plt.subplots(len(series), 1, sharex=True, figsize=(8, 2.2 * len(series)))
    for ax, (label, ys) in zip(axes, series.items(), strict=True):
        ax.plot(x, ys)
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    axes[0].set_title(title)
    axes[-1].set_xlabel(xlabel)
    fig.tight_layout()
    path = OUT / f"{name}.png"
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def plot_bars(
    name: str,
    title: str,
    bars: dict[str, float],
    *,
    ylabel: str,
    limit: float | None = None,
    limit_label: str = "",
) -> Path:
    """One bar per entry, with an optional horizontal line for a limit."""
    OUT.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(8, 4))
    ax.bar(list(bars), list(bars.values()))
    for i, value in enumerate(bars.values()):
        ax.annotate(f"{value:.0f}", (i, value), ha="center", va="bottom")
    if limit is not None:
        ax.axhline(limit, color="red", linestyle="--", label=limit_label)
        ax.legend()
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    fig.tight_layout()
    path = OUT / f"{name}.png"
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def dashboard(result: dict[str, Any]) -> Path:
    bars = {
        "page, 10 tasks": result["task_page_10_stored_ms"],
        "page, 1000 tasks": result["task_page_1000_stored_ms"],
        "failed, 10": result["failed_page_10_stored_ms"],
        "failed, 1000": result["failed_page_1000_stored_ms"],
        "trace, 5 spans": result["trace_5_spans_ms"],
        "trace, 500 spans": result["trace_500_spans_ms"],
    }
    if "waterfall_500_spans_ms" in result:
        bars["drawn, 5 spans"] = result["waterfall_5_spans_ms"]
        bars["drawn, 500 spans"] = result["waterfall_500_spans_ms"]
    fig, ax = plt.subplots(figsize=(10, 4))
    ax.bar(list(bars), list(bars.values()))
    for i, value in enumerate(bars.values()):
        ax.annotate(f"{value:.1f}", (i, value), ha="center", va="bottom")
    ax.set_ylabel("p50 ms")
    ax.set_title("Dashboard: small against big, measured back to back")
    ax.tick_params(axis="x", labelrotation=20)
    return _save(fig, "dashboard.png")


def mcp(result: dict[str, Any]) -> Path:
    fig, ax = plt.subplots(figsize=(6, 4))
    samples = result["samples"]
    ax.boxplot([samples["builtin"], samples["mcp"]], tick_labels=["built-in tool", "MCP tool"])
    ax.set(
        ylabel="tool call (ms)",
        title=f"MCP tool call vs built-in: ratio {result['ratio']} (+{result['added_p50_ms']} ms p50)",
    )
    return _save(fig, "mcp_tool_call.png")
