"""The orchestrator's HTTP API.

``POST /tasks`` validates the task, records it durably in Redis and answers at once
with its id; the planner works on it in the background.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated, Any, cast

import httpx
import redis
from agentmesh_shared import deadletter, events, keys, metrics, telemetry
from agentmesh_shared.models import (
    TaskEvent,
    TaskLimits,
    TaskRecord,
    TaskRequest,
    TaskStatus,
    WorkerInfo,
    new_id,
)
from fastapi import FastAPI, Header, HTTPException, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from opentelemetry import trace
from starlette.concurrency import run_in_threadpool

from agentmesh_orchestrator.service import Services
from agentmesh_orchestrator.trace_api import register_trace_routes
from agentmesh_orchestrator.traces import TraceReader

log = logging.getLogger("agentmesh.api")
_tracer = telemetry.tracer("agentmesh.orchestrator.api")


def _format_errors(errors: Any) -> str:
    parts = []
    for e in errors:
        loc = [str(p) for p in e.get("loc", ()) if p not in ("body",)]
        parts.append(f"{'.'.join(loc) or 'body'}: {e.get('msg')}")
    return "; ".join(parts)


def create_app(services: Services, *, start_planner: bool = True) -> FastAPI:
    settings = services.settings

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        if start_planner:
            resumed = await run_in_threadpool(services.planner.resume_all)
            if resumed:
                log.info("resumed %d unfinished task(s)", len(resumed), extra={"task_ids": resumed})
        yield
        services.planner.shutdown()

    app = FastAPI(
        title="agentmesh orchestrator",
        version="0.1.0",
        lifespan=lifespan,
        # FastAPI's own server spans (POST /tasks, ...) parent our spans; health probes
        # every few seconds would only fill the trace store, and the per-request
        # dependency/serialization spans say nothing about tasks.
        telemetry={
            "exclude": lambda scope: scope.get("path") in {"/healthz", "/readyz"},
            "operation_spans": False,
        },
    )

    @app.exception_handler(RequestValidationError)
    async def invalid_request(_: Request, exc: RequestValidationError) -> JSONResponse:
        return JSONResponse(
            status_code=422,
            content={"detail": f"invalid request: {_format_errors(exc.errors())}"},
        )

    def _get(task_id: str) -> TaskRecord:
        record = services.store.get(task_id) if keys_ok(task_id) else None
        if record is None:
            raise HTTPException(status_code=404, detail=f"unknown task id {task_id!r}")
        return record

    @app.post("/tasks", status_code=202, response_model=TaskRecord)
    def submit(
        body: TaskRequest,
        request: Request,
        idempotency_key: Annotated[str | None, Header(max_length=200)] = None,
    ) -> TaskRecord:
        if len(body.text) > settings.max_task_chars:
            raise HTTPException(
                status_code=422,
                detail=(
                    f"invalid request: text: {len(body.text)} characters is over the limit of "
                    f"{settings.max_task_chars} (AGENTMESH_MAX_TASK_CHARS)"
                ),
            )
        if not settings.llm_configured:
            raise HTTPException(
                status_code=503,
                detail=(
                    "the model is not configured: put an Anthropic API key in "
                    "secrets/anthropic_api_key (or set ANTHROPIC_API_KEY) and restart, "
                    "or run `make demo` for the scripted model"
                ),
            )
        # Inside FastAPI's server span when its telemetry is on; else from the headers.
        current = trace.get_current_span().get_span_context()
        parent = None if current.is_valid else telemetry.extract(dict(request.headers))
        with _tracer.start_as_current_span("task.submit", context=parent):
            record = TaskRecord(
                id=new_id(),
                text=body.text,
                limits=TaskLimits(
                    max_steps=body.max_steps or settings.max_steps,
                    token_budget=body.token_budget or settings.token_budget,
                    timeout_s=body.timeout_s or settings.task_timeout_s,
                ),
                trace_id=telemetry.current_trace_id(),
                traceparent=telemetry.inject().get("traceparent"),
            )
            stored = services.store.create(record, idempotency=idempotency_key)
            if stored.id == record.id:
                metrics.tasks().add(1, {"status": "accepted"})
                events.publish(services.redis, record.id, "task.queued", "task accepted")
                services.planner.submit(record.id)
        return stored

    @app.get("/tasks", response_model=list[TaskRecord])
    def list_tasks(
        limit: Annotated[int, Query(ge=1, le=500)] = 50,
        status: TaskStatus | None = None,
    ) -> list[TaskRecord]:
        return services.store.recent(limit=limit, status=status)

    @app.get("/tasks/{task_id}", response_model=TaskRecord)
    def get_task(task_id: str) -> TaskRecord:
        return _get(task_id)

    @app.get("/tasks/{task_id}/events", response_model=list[TaskEvent])
    def task_events(
        task_id: str,
        after: Annotated[str, Query(pattern=r"^\d+(-\d+)?$")] = "0",
        wait: Annotated[float, Query(ge=0, le=30)] = 0,
    ) -> list[TaskEvent]:
        _get(task_id)
        return events.read(services.redis, task_id, after=after, block_ms=int(wait * 1000) or None)

    @app.post("/tasks/{task_id}/cancel", status_code=202, response_model=TaskRecord)
    def cancel(task_id: str) -> TaskRecord:
        record = _get(task_id)
        if record.status.terminal:
            raise HTTPException(
                status_code=409, detail=f"task {task_id} already {record.status.value}"
            )
        services.redis.set(keys.cancel_flag(task_id), "1", ex=7 * 86_400)
        events.publish(services.redis, task_id, "task.cancelling", "cancellation requested")
        if record.status is TaskStatus.QUEUED:
            services.planner.submit(task_id)
        return _get(task_id)

    @app.get("/workers", response_model=list[WorkerInfo])
    def workers() -> list[WorkerInfo]:
        raw = cast("dict[str, str]", services.redis.hgetall(keys.WORKER_INDEX))
        stale_after = settings.heartbeat_interval_s * 3 + 5
        live: list[WorkerInfo] = []
        for hostname, payload in raw.items():
            info = WorkerInfo.model_validate_json(payload)
            if time.time() - info.last_seen > stale_after:
                services.redis.hdel(keys.WORKER_INDEX, hostname)
                continue
            live.append(info)
        return sorted(live, key=lambda w: (w.role.value, w.hostname))

    @app.get("/deadletter")
    def dead_letters(limit: Annotated[int, Query(ge=1, le=1000)] = 100) -> list[dict[str, Any]]:
        return deadletter.entries(services.redis, limit)

    @app.get("/healthz")
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz")
    def readyz() -> JSONResponse:
        checks: dict[str, str] = {}
        try:
            services.redis.ping()
            checks["redis"] = "ok"
        except redis.RedisError as err:
            checks["redis"] = f"unreachable: {type(err).__name__}"
        try:
            url = str(settings.chroma_url).rstrip("/") + "/api/v2/heartbeat"
            httpx.get(url, timeout=2.0).raise_for_status()
            checks["chroma"] = "ok"
        except httpx.HTTPError as err:
            checks["chroma"] = f"unreachable: {type(err).__name__}"
        checks["llm"] = (
            "configured"
            if settings.llm_configured
            else "not configured: put a key in secrets/anthropic_api_key or set ANTHROPIC_API_KEY"
        )
        ready = checks["redis"] == "ok" and checks["chroma"] == "ok"
        return JSONResponse(
            status_code=200 if ready else 503,
            content={"status": "ready" if ready else "not ready", "checks": checks},
        )

    reader = TraceReader(settings.traces_file)
    register_trace_routes(
        app,
        lambda: reader,
        lambda task_id: services.store.get(task_id) if keys_ok(task_id) else None,
    )
    return app


def keys_ok(task_id: str) -> bool:
    return 0 < len(task_id) <= 128 and all(c.isalnum() or c in "_.:-" for c in task_id)
