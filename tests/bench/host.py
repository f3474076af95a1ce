"""The machine a benchmark ran on, so figures from different runs can be compared.

The mesh's throughput figures are CPU-bound, and the machines it is measured on are
not all alike: the same code has measured ~100 ms of mesh CPU a task at N = 100 on
one host and ~140 on another (an AVX2-only one, where the embedding's integer
products also lack VNNI). A run's figures are ratios measured within it; across
runs, the host's CPU model, its vector extensions and ``python_ms`` (a fixed
pure-Python workload, the fastest of several timings: the least disturbed) say
whether two runs were on comparable machines.
"""

from __future__ import annotations

import json
import os
import platform
import time
from pathlib import Path
from typing import Any

_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8")


def _cpuinfo() -> tuple[str, set[str]]:
    """The first CPU's model name and flags (Linux), or the platform's processor."""
    model, flags = "", set()
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        text = ""
    for line in text.splitlines():
        key, _, value = (part.strip() for part in line.partition(":"))
        if key == "model name" and not model:
            model = value
        elif key == "flags" and not flags:
            flags = set(value.split())
    return model or platform.processor() or "unknown", flags


def _python_workload() -> None:
    """~10 ms of the interpreter's everyday work: dicts, strings, JSON, calls."""
    records = [{"id": f"task-{i}", "n": i, "tags": ["a", "b", str(i)]} for i in range(300)]
    for _ in range(6):
        blob = json.dumps(records)
        back = json.loads(blob)
        total = sum(r["n"] for r in back if r["id"].endswith(("1", "3", "7")))
        assert total > 0


def python_ms(samples: int = 15) -> float:
    """CPU milliseconds of :func:`_python_workload`, the fastest of ``samples``."""
    _python_workload()
    timings = []
    for _ in range(samples):
        start = time.process_time()
        _python_workload()
        timings.append((time.process_time() - start) * 1000)
    return round(min(timings), 2)


def describe() -> dict[str, Any]:
    """The host's CPU model, cores, vector extensions and ``python_ms``."""
    model, flags = _cpuinfo()
    return {
        "cpu": model,
        "cores": os.cpu_count(),
        "extensions": [f for f in _FLAGS if f in flags],
        "python_ms": python_ms(),
    }
