"""The dashboard: a page on the API's port to watch the mesh, and the routes it reads.

The page is a handful of static files (HTML, CSS and ES modules, in ``ui/`` of this
package) served at ``/ui/``: no build step, nothing fetched from elsewhere. It holds
no data, so it is served without the token; everything it shows it reads from the
API with the bearer token, which the page's login form keeps in the tab's
``sessionStorage`` (never in a URL or a cookie: see the README). Every page response
carries a strict Content-Security-Policy: scripts and styles from this origin only,
no inline script, no connection elsewhere.

Routes for the page, behind the token like every API route:

- ``GET /dashboard/tasks``: a page of task summaries (newest first, status filter),
  small enough to poll with thousands of tasks stored;
- ``GET /dashboard/tasks/{id}/answer``: the final answer as sanitised HTML
  (:mod:`agentmesh_orchestrator.render`);
- ``GET /dashboard/queues``: messages waiting in each role's queue.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from importlib import resources
from typing import Annotated, cast

import redis
from agentmesh_shared.handoff import Handoff
from agentmesh_shared.models import Role, TaskLimits, TaskRecord, TaskStatus, Usage
from fastapi import FastAPI, HTTPException, Query
from fastapi.responses import RedirectResponse, Response
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool

from agentmesh_orchestrator.render import render_markdown
from agentmesh_orchestrator.store import TaskStore

UI_PREFIX = "/ui/"
CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
    "connect-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'"
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}
_TYPES = {
    ".html": "text/html",
    ".js": "text/javascript",
    ".css": "text/css",
    ".svg": "image/svg+xml",
}
SUMMARY_TEXT_CHARS = 200
# Kombu's Redis transport keeps a queue's prioritised messages in lists of their own.
_PRIORITY_SUFFIXES = ("", "\x06\x163", "\x06\x166", "\x06\x169")


class TaskSummary(BaseModel):
    """What the task list shows of a task (its record without results)."""

    id: str
    text: str = Field(description=f"the first {SUMMARY_TEXT_CHARS} characters of the task")
    status: TaskStatus
    created_at: float
    updated_at: float
    finished_at: float | None
    usage: Usage
    limits: TaskLimits
    steps: int
    subtasks_done: int
    subtasks_total: int

    @classmethod
    def of(cls, record: TaskRecord) -> TaskSummary:
        return cls(
            id=record.id,
            text=record.text[:SUMMARY_TEXT_CHARS],
            status=record.status,
            created_at=record.created_at,
            updated_at=record.updated_at,
            finished_at=record.finished_at,
            usage=record.usage,
            limits=record.limits,
            steps=record.steps,
            subtasks_done=sum(1 for s in record.subtasks if s.status.terminal),
            subtasks_total=len(record.subtasks),
        )


class TaskPage(BaseModel):
    tasks: list[TaskSummary]
    offset: int
    next_offset: int | None = Field(description="where the next page starts; null at the end")
    stored: int = Field(description="tasks stored, whatever their status")
    now: float = Field(description="the server's clock, for ages and running durations")


class Answer(BaseModel):
    task_id: str
    status: TaskStatus
    html: str | None = Field(description="the final answer as sanitised HTML; null until then")


def queue_depths(client: redis.Redis) -> dict[str, int]:
    """Messages waiting in each role's queue (priority lists included), by role."""
    pipe = client.pipeline(transaction=False)
    for role in Role:
        for suffix in _PRIORITY_SUFFIXES:
            pipe.llen(role.queue + suffix)
    lengths = cast("list[int]", pipe.execute())
    per_role = len(_PRIORITY_SUFFIXES)
    return {
        role.value: sum(lengths[i * per_role : (i + 1) * per_role]) for i, role in enumerate(Role)
    }


def _ui_files() -> dict[str, tuple[bytes, str]]:
    """The page's files, read once: name -> (content, media type)."""
    files: dict[str, tuple[bytes, str]] = {}
    for entry in resources.files("agentmesh_orchestrator").joinpath("ui").iterdir():
        suffix = "." + entry.name.rpartition(".")[2]
        if entry.is_file() and suffix in _TYPES:
            files[entry.name] = (entry.read_bytes(), _TYPES[suffix])
    return files


def register_dashboard(
    app: FastAPI,
    store: TaskStore,
    get_task: Callable[[str], TaskRecord | None],
) -> None:
    """Add the page (``/``, ``/ui/``) and its routes (``/dashboard/...``) to ``app``."""
    files = _ui_files()
    handoff = Handoff(store.redis)

    @app.get("/", include_in_schema=False)
    @app.get(UI_PREFIX.rstrip("/"), include_in_schema=False)
    def root() -> RedirectResponse:
        return RedirectResponse(UI_PREFIX, status_code=307)

    @app.get(UI_PREFIX + "{name:path}", include_in_schema=False)
    def ui_file(name: str) -> Response:
        found = files.get(name or "index.html")
        if found is None:
            raise HTTPException(status_code=404, detail=f"no such page file {name!r}")
        content, media_type = found
        return Response(content, media_type=media_type, headers=SECURITY_HEADERS)

    @app.get("/dashboard/tasks", response_model=TaskPage)
    def task_page(
        offset: Annotated[int, Query(ge=0, le=10_000_000)] = 0,
        limit: Annotated[int, Query(ge=1, le=200)] = 25,
        status: TaskStatus | None = None,
    ) -> TaskPage:
        records, next_offset = store.page(offset=offset, limit=limit, status=status)
        handoff.progress(records)  # what workers reported since the planner's last step
        return TaskPage(
            tasks=[TaskSummary.of(r) for r in records],
            offset=offset,
            next_offset=next_offset,
            stored=store.stored_count(),
            now=time.time(),
        )

    @app.get("/dashboard/tasks/{task_id}/answer", response_model=Answer)
    async def answer(task_id: str) -> Answer:
        record = await run_in_threadpool(get_task, task_id)
        if record is None:
            raise HTTPException(status_code=404, detail=f"unknown task id {task_id!r}")
        html = None if record.result is None else render_markdown(record.result)
        return Answer(task_id=task_id, status=record.status, html=html)

    @app.get("/dashboard/queues")
    def queues() -> dict[str, int]:
        return queue_depths(store.redis)
