"""The dashboard's figure: does a page stay as quick with 1,000 stored tasks and a
500-span trace as with a handful?

Over real HTTP (uvicorn) against a real redis-server, the routes the page polls are
timed back to back at two sizes: a task page (25 rows) with 10 and with 1,000 tasks
stored, the same filtered by a status, and a task's trace with 5 and with 500 spans.
In Debian's Chromium, the time from opening the trace page to its last row drawn, at
5 and at 500 spans. Each figure is the ratio of the big size to the small one.
"""

from __future__ import annotations

import statistics
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import uvicorn
from agentmesh_orchestrator.auth import BearerAuthMiddleware
from agentmesh_orchestrator.dashboard import register_dashboard
from agentmesh_orchestrator.store import TaskStore
from agentmesh_orchestrator.trace_api import register_trace_routes
from agentmesh_orchestrator.traces import TraceReader
from fastapi import FastAPI

from tests.support.browser import Dashboard, browser_available, chromium
from tests.support.chroma_server import free_port
from tests.support.dashboard_data import append_trace, seed_finished_tasks
from tests.support.redis_server import redis_server

TOKEN = "bench-dashboard-token"


def _p50_ms(call: Callable[[], Any], n: int) -> float:
    call()  # warm-up
    samples = []
    for _ in range(n):
        t = time.perf_counter()
        call()
        samples.append(time.perf_counter() - t)
    return round(statistics.median(samples) * 1000, 2)


def bench_dashboard(root: Path, n: int) -> dict[str, Any]:
    traces_file = root / "traces.jsonl"
    (root / "redis").mkdir(parents=True, exist_ok=True)
    with redis_server(root / "redis") as client:
        store = TaskStore(client)
        app = FastAPI()
        register_dashboard(app, store, store.get)
        register_trace_routes(app, lambda: TraceReader(traces_file), store.get)
        app.add_middleware(BearerAuthMiddleware, token=TOKEN)
        port = free_port()
        server = uvicorn.Server(uvicorn.Config(app, port=port, log_level="warning"))
        thread = threading.Thread(target=server.run, daemon=True)
        thread.start()
        base = f"http://127.0.0.1:{port}"
        http = httpx.Client(base_url=base, headers={"Authorization": f"Bearer {TOKEN}"})
        try:
            while not server.started:
                time.sleep(0.05)

            def page(**params: str) -> Callable[[], Any]:
                return lambda: http.get("/dashboard/tasks", params={"limit": "25", **params})

            small, big = (
                append_trace(client, traces_file, 5),
                append_trace(client, traces_file, 500),
            )

            def trace(task_id: str) -> Callable[[], Any]:
                return lambda: http.get(f"/tasks/{task_id}/trace").raise_for_status()

            seed_finished_tasks(client, 8)  # 10 stored with the two traced tasks
            few = _p50_ms(page(), n)
            few_failed = _p50_ms(page(status="failed"), n)
            seed_finished_tasks(client, 990)
            many = _p50_ms(page(), n)
            many_failed = _p50_ms(page(status="failed"), n)
            trace_small, trace_big = _p50_ms(trace(small.id), n), _p50_ms(trace(big.id), n)
            result: dict[str, Any] = {
                "requests_each": n,
                "task_page_10_stored_ms": few,
                "task_page_1000_stored_ms": many,
                "task_page_ratio": round(many / few, 2),
                "failed_page_10_stored_ms": few_failed,
                "failed_page_1000_stored_ms": many_failed,
                "failed_page_ratio": round(many_failed / few_failed, 2),
                "trace_5_spans_ms": trace_small,
                "trace_500_spans_ms": trace_big,
                "trace_ratio": round(trace_big / trace_small, 2),
            }
            if browser_available() is None:
                result.update(_browser(base, small.id, big.id, max(3, n // 10)))
            else:
                result["browser"] = f"skipped: {browser_available()}"
            return result
        finally:
            http.close()
            server.should_exit = True
            thread.join(timeout=10)


def _browser(base: str, small: str, big: str, n: int) -> dict[str, Any]:
    """Opening a task's trace page until its last row is drawn, at 5 and 500 spans."""
    with chromium() as driver:
        page = Dashboard(driver, base, TOKEN)
        page.signed_in()

        def draw(task_id: str, rows: int) -> Callable[[], Any]:
            def go() -> None:
                page.open("ui/#/tasks")
                page.wait(lambda d: page.all("#task-rows"), "the task list")
                page.open(f"ui/#/tasks/{task_id}/trace")
                page.wait(
                    lambda d: (
                        len(page.attrs("#waterfall .span-row[data-span-id]", "data-span-id"))
                        == rows
                    ),
                    f"{rows} rows",
                )

            return go

        few, many = _p50_ms(draw(small, 5), n), _p50_ms(draw(big, 500), n)
    return {
        "browser_draws_each": n,
        "waterfall_5_spans_ms": few,
        "waterfall_500_spans_ms": many,
        "waterfall_ratio": round(many / few, 2),
    }
