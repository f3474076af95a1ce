"""The orchestrator's HTTP API.

``POST /tasks`` validates the task, records it durably in Redis and answers at once
with its id; the planner works on it in the background. Every route but ``/healthz``
and ``/readyz`` needs the API's bearer token (see :mod:`agentmesh_orchestrator.auth`);
``/readyz`` tells an unauthenticated caller only whether the mesh is ready.
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
from agentmesh_shared.handoff import Handoff
from agentmesh_shared.heap import freeze_startup_heap
from agentmesh_shared.llm import ModelStatus
from agentmesh_shared.models import (
    TaskEvent,
    TaskLimits,
    TaskRecord,
    TaskRequest,
    TaskStatus,
    WorkerInfo,
    new_id,
)
from agentmesh_shared.redisconn import MAX_BLOCK_S
from fastapi import FastAPI, Header, HTTPException, Query, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from opentelemetry import trace
from starlette.concurrency import run_in_threadpool

from agentmesh_orchestrator.auth import BearerAuthMiddleware, caller_identity
from agentmesh_orchestrator.client import LIMIT_HEADER
from agentmesh_orchestrator.dashboard import register_dashboard
from agentmesh_orchestrator.limits import FloodGuard, MemoryWatch
from agentmesh_orchestrator.service import Services
from agentmesh_orchestrator.store import AdmissionRefusedError
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
    """The API; with ``start_planner``, this process also runs planning steps."""
    settings = services.settings
    handoff = Handoff(services.redis)
    start_planner = start_planner and settings.planner_concurrency > 0
    model_status = ModelStatus(settings)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        if start_planner:
            await run_in_threadpool(services.planner.start)
        freeze_startup_heap()
        yield
        if start_planner:
            services.planner.shutdown()

    app = FastAPI(
        title="agentmesh orchestrator",
        version="0.1.0",
        lifespan=lifespan,
        # FastAPI's own server spans (POST /tasks, ...) parent our spans; health probes
        # every few seconds, and the dashboard's files and polls, would only fill the
        # trace store, and the per-request dependency/serialization spans say nothing
        # about tasks.
        telemetry={
            "exclude": lambda scope: (
                scope.get("path") in {"/healthz", "/readyz", "/", "/ui"}
                or str(scope.get("path", "")).startswith(("/ui/", "/dashboard/"))
            ),
            "operation_spans": False,
        },
    )

    app.add_middleware(FloodGuard, settings=settings, client=services.aredis)
    memory = MemoryWatch(services.redis, settings.redis_memory_high_water)
    token = settings.api_token.get_secret_value() if settings.api_token else ""
    chroma_auth = (
        {"Authorization": f"Bearer {settings.chroma_token.get_secret_value()}"}
        if settings.chroma_token
        else {}
    )
    # Added last, so outermost: a request without the token is refused before it
    # counts against any flood limit (which then keys on a verified token).
    app.add_middleware(BearerAuthMiddleware, token=token)

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
        handoff.progress([record])
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
        problem = model_status.problem()
        if problem is not None:
            raise HTTPException(status_code=503, detail=problem)
        memory_ok, memory_state = memory.check()
        if not memory_ok:
            raise HTTPException(
                status_code=503,
                detail=f"not accepting new tasks: Redis is nearly full: {memory_state}",
                headers={"Retry-After": "30"},
            )
        held = services.store.make_room(settings.max_stored_tasks)
        if held >= settings.max_stored_tasks:
            raise HTTPException(
                status_code=503,
                detail=(
                    f"not accepting new tasks: {held} tasks are stored and the oldest are "
                    f"unfinished (AGENTMESH_MAX_STORED_TASKS={settings.max_stored_tasks}); "
                    "retry when some have finished"
                ),
                headers={"Retry-After": "30"},
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
            try:
                stored = services.store.create(
                    record, idempotency=idempotency_key, limit=settings.max_active_tasks
                )
            except AdmissionRefusedError as err:
                metrics.tasks().add(1, {"status": "refused"})
                retry = settings.admission_retry_after_s
                raise HTTPException(
                    status_code=429,
                    detail=(
                        f"the mesh is at its limit of {err.limit} unfinished tasks "
                        f"(AGENTMESH_MAX_ACTIVE_TASKS); nothing was stored: submit again in "
                        f"{retry} s, or raise the limit"
                    ),
                    headers={"Retry-After": str(retry), LIMIT_HEADER: "admission"},
                ) from None
            if stored.id == record.id:
                metrics.tasks().add(1, {"status": "accepted"})
        return stored

    @app.get("/tasks", response_model=list[TaskRecord])
    def list_tasks(
        limit: Annotated[int, Query(ge=1, le=500)] = 50,
        status: TaskStatus | None = None,
    ) -> list[TaskRecord]:
        records = services.store.recent(limit=limit, status=status)
        handoff.progress(records)
        return records

    @app.get("/tasks/{task_id}", response_model=TaskRecord)
    def get_task(task_id: str) -> TaskRecord:
        return _get(task_id)

    @app.get("/tasks/{task_id}/events", response_model=list[TaskEvent])
    async def task_events(
        task_id: str,
        after: Annotated[str, Query(pattern=r"^\d+(-\d+)?$", max_length=42)] = "0",
        wait: Annotated[float, Query(ge=0, le=MAX_BLOCK_S)] = 0,
    ) -> list[TaskEvent]:
        """Events after ``after``; with ``wait``, a long-poll answering within ``wait``.

        Async on purpose: a waiting long-poll holds a coroutine and an asyncio Redis
        connection, not one of the server's threads, so any number of followers
        cannot starve the other endpoints (sync endpoints share one thread pool).
        """
        if any(int(part) >= 2**64 for part in after.split("-")):
            raise HTTPException(
                status_code=422,
                detail=f"invalid request: after: {after!r} is not a stream id (each part < 2^64)",
            )
        if not (keys_ok(task_id) and await services.aredis.exists(keys.task(task_id))):
            raise HTTPException(status_code=404, detail=f"unknown task id {task_id!r}")
        return await events.read_async(
            services.aredis, task_id, after=after, block_ms=int(wait * 1000) or None
        )

    @app.post("/tasks/{task_id}/cancel", status_code=202, response_model=TaskRecord)
    def cancel(task_id: str) -> TaskRecord:
        record = _get(task_id)
        if record.status.terminal:
            raise HTTPException(
                status_code=409, detail=f"task {task_id} already {record.status.value}"
            )
        services.redis.set(keys.cancel_flag(task_id), "1", ex=keys.RETENTION_S)
        events.publish(services.redis, task_id, "task.cancelling", "cancellation requested")
        handoff.wake(task_id)
        return _get(task_id)

    @app.get("/workers", response_model=list[WorkerInfo])
    def workers() -> list[WorkerInfo]:
        return live_workers()

    def live_workers() -> list[WorkerInfo]:
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
    def dead_letters(
        response: Response, limit: Annotated[int, Query(ge=1, le=1000)] = 100
    ) -> list[dict[str, Any]]:
        """The newest dead letters, newest first; the list is left as it is."""
        response.headers["X-Dead-Letter-Total"] = str(deadletter.total(services.redis))
        return deadletter.entries(services.redis, limit)

    @app.post("/deadletter/drain")
    def drain_dead_letters(
        limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    ) -> list[dict[str, Any]]:
        """Remove and return the oldest ``limit`` dead letters, oldest first."""
        return deadletter.drain(services.redis, limit)

    @app.get("/healthz")
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz")
    def readyz(request: Request) -> JSONResponse:
        checks: dict[str, str] = {}
        try:
            services.redis.ping()
            checks["redis"] = "ok"
        except redis.RedisError as err:
            checks["redis"] = f"unreachable: {type(err).__name__}"
        try:
            url = str(settings.chroma_url).rstrip("/") + "/v1/heartbeat"  # the memory service
            httpx.get(url, timeout=2.0, headers=chroma_auth).raise_for_status()
            checks["chroma"] = "ok"
        except httpx.HTTPError as err:
            checks["chroma"] = f"unreachable: {type(err).__name__}"
        if checks["redis"] == "ok":
            try:
                memory_ok, checks["redis_memory"] = memory.check()
            except redis.RedisError as err:
                memory_ok, checks["redis_memory"] = False, f"unknown: {type(err).__name__}"
        else:
            memory_ok = False
        problem = model_status.problem()
        checks["llm"] = "configured" if problem is None else f"not configured: {problem}"
        if checks["redis"] == "ok":
            checks.update(mcp_checks(live_workers()))
        ready = checks["redis"] == "ok" and checks["chroma"] == "ok"
        status = "ready" if ready and memory_ok else "degraded" if ready else "not ready"
        content: dict[str, Any] = {"status": status}
        if caller_identity(request) is not None:
            content["checks"] = checks
        return JSONResponse(status_code=200 if status == "ready" else 503, content=content)

    register_dashboard(
        app,
        services.store,
        lambda task_id: services.store.get(task_id) if keys_ok(task_id) else None,
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


def mcp_checks(workers: list[WorkerInfo]) -> dict[str, str]:
    """Per MCP server (``mcp:<name>``), as the live workers granted it see it.

    A server that is down does not make the mesh unready (its tool calls fail with a
    clear error, everything else works); readiness names it and who cannot reach it.
    """
    checks: dict[str, str] = {}
    for name in sorted({n for w in workers for n in w.mcp}):
        missing = [
            f"{w.role.value}@{w.hostname} ({w.mcp[name]})"
            for w in workers
            if name in w.mcp and w.mcp[name] != "connected"
        ]
        checks[f"mcp:{name}"] = (
            "connected" if not missing else "not connected on " + ", ".join(missing)
        )
    return checks
