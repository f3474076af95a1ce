"""The dashboard's API pieces on a real redis-server: pages over 1,000 stored tasks, a
500-span trace, the sanitised answer, the queue depths, and what needs the token."""

from __future__ import annotations

from collections.abc import Iterator
from html.parser import HTMLParser
from pathlib import Path

import pytest
import redis
from agentmesh_orchestrator.auth import BearerAuthMiddleware
from agentmesh_orchestrator.dashboard import CONTENT_SECURITY_POLICY, register_dashboard
from agentmesh_orchestrator.render import render_markdown
from agentmesh_orchestrator.store import TaskStore
from agentmesh_orchestrator.trace_api import register_trace_routes
from agentmesh_orchestrator.traces import TraceReader
from agentmesh_shared.models import (
    Role,
    SubtaskRecord,
    TaskLimits,
    TaskRecord,
    TaskStatus,
    Usage,
    new_id,
)
from fastapi import FastAPI
from fastapi.testclient import TestClient
from opentelemetry import trace

from tests.support.otlp_json import Service, json_line
from tests.support.redis_server import redis_server

pytestmark = pytest.mark.unit
TOKEN = "dashboard-test-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
STATUSES = list(TaskStatus)


@pytest.fixture
def r(tmp_path: Path) -> Iterator[redis.Redis]:
    with redis_server(tmp_path) as client:
        yield client


def _client(store: TaskStore, traces_file: Path | None = None) -> TestClient:
    app = FastAPI()
    register_dashboard(app, store, store.get)
    if traces_file is not None:
        register_trace_routes(app, lambda: TraceReader(traces_file), store.get)
    app.add_middleware(BearerAuthMiddleware, token=TOKEN)
    return TestClient(app)


def _stored(store: TaskStore, count: int) -> list[TaskRecord]:
    """``count`` tasks, one a second apart, statuses in turn, two subtasks each."""
    records = []
    for i in range(count):
        record = TaskRecord(
            id=new_id(),
            text=f"task number {i} " + "x" * 500,
            status=STATUSES[i % len(STATUSES)],
            limits=TaskLimits(max_steps=3, token_budget=1000, timeout_s=60),
            usage=Usage(input_tokens=i, output_tokens=1),
            created_at=1_000_000.0 + i,
            subtasks=[
                SubtaskRecord(
                    id=f"s{i}a", role=Role.RESEARCHER, instruction="a", status=TaskStatus.SUCCEEDED
                ),
                SubtaskRecord(id=f"s{i}b", role=Role.CODER, instruction="b"),
            ],
        )
        store.create(record, limit=10_000)
        records.append(record)
    return records


def _walk(client: TestClient, **params: object) -> list[dict[str, object]]:
    seen: list[dict[str, object]] = []
    offset: int | None = 0
    pages = 0
    while offset is not None:
        reply = client.get("/dashboard/tasks", params={"offset": offset, **params}, headers=AUTH)
        assert reply.status_code == 200, reply.text
        page = reply.json()
        assert page["stored"] == 1000 and len(page["tasks"]) <= int(str(params["limit"]))
        seen.extend(page["tasks"])
        offset = page["next_offset"]
        pages += 1
        assert pages <= 1000, "paging does not end"
    return seen


def test_pages_visit_each_of_1000_tasks_once_newest_first(r: redis.Redis) -> None:
    store = TaskStore(r)
    records = _stored(store, 1000)
    client = _client(store)

    seen = _walk(client, limit=25)

    assert [t["id"] for t in seen] == [rec.id for rec in reversed(records)]
    newest = seen[0]
    assert newest["subtasks_done"] == 1 and newest["subtasks_total"] == 2
    assert newest["usage"] == {"input_tokens": 999, "output_tokens": 1}
    assert len(str(newest["text"])) == 200  # a summary, not the whole record
    assert "result" not in newest and "subtasks" not in newest


@pytest.mark.parametrize("status", [TaskStatus.FAILED, TaskStatus.RUNNING])
def test_a_status_filter_pages_through_its_matches_only(r: redis.Redis, status: TaskStatus) -> None:
    store = TaskStore(r)
    records = _stored(store, 1000)
    client = _client(store)

    seen = _walk(client, limit=30, status=status.value)

    expected = [rec.id for rec in reversed(records) if rec.status is status]
    assert [t["id"] for t in seen] == expected and len(expected) == 200
    assert {t["status"] for t in seen} == {status.value}


def test_a_rare_status_is_looked_for_a_bounded_stretch_at_a_time(r: redis.Redis) -> None:
    store = TaskStore(r)
    records = _stored(store, 1000)
    store.update(records[0].id, lambda rec: setattr(rec, "text", "oldest"))
    # Only the oldest task is cancelled... among 999 that are not.
    for rec in records[1:]:
        if rec.status is TaskStatus.CANCELLED:
            store.update(rec.id, lambda rec: setattr(rec, "status", TaskStatus.QUEUED))
    store.update(records[0].id, lambda rec: setattr(rec, "status", TaskStatus.CANCELLED))

    found, next_offset = store.page(offset=0, limit=10, status=TaskStatus.CANCELLED, scan=300)
    assert found == [] and next_offset == 300  # one bounded read, then "go on from 300"
    found, next_offset = store.page(offset=900, limit=10, status=TaskStatus.CANCELLED, scan=300)
    assert [t.text for t in found] == ["oldest"] and next_offset is None


def test_bad_paging_parameters_get_a_clear_422(r: redis.Redis) -> None:
    client = _client(TaskStore(r))
    for params in ({"limit": 0}, {"limit": 201}, {"offset": -1}, {"status": "done"}):
        reply = client.get("/dashboard/tasks", params=params, headers=AUTH)
        assert reply.status_code == 422, params


def test_a_500_span_trace_is_served_whole_as_one_tree(r: redis.Redis, tmp_path: Path) -> None:
    services = {
        name: Service(name, f"{name}-1") for name in ("orchestrator", "researcher", "coder")
    }
    names = list(services)
    with services["orchestrator"].tracer.start_as_current_span("task.submit") as root:
        for i in range(499):
            service = services[names[i % 3]]
            with service.tracer.start_as_current_span(
                f"chat {i}",
                attributes={"gen_ai.operation.name": "chat", "gen_ai.usage.input_tokens": 10},
            ):
                pass
    trace_id = format(root.get_span_context().trace_id, "032x")
    traces_file = tmp_path / "traces.jsonl"
    with traces_file.open("w") as out:
        for service in services.values():
            out.write(json_line(service.spans()))
    store = TaskStore(r)
    record = TaskRecord(
        id=new_id(),
        text="t",
        status=TaskStatus.SUCCEEDED,
        limits=TaskLimits(max_steps=3, token_budget=1000, timeout_s=60),
        usage=Usage(input_tokens=4990),
        trace_id=trace_id,
        subtasks=[
            SubtaskRecord(id="a", role=Role.RESEARCHER, instruction="a"),
            SubtaskRecord(id="b", role=Role.CODER, instruction="b"),
        ],
    )
    store.create(record, limit=10)

    body = _client(store, traces_file).get(f"/tasks/{record.id}/trace", headers=AUTH).json()

    assert len(body["spans"]) == 500 and body["complete"] is True
    assert body["missing_parents"] == 0
    assert trace.format_span_id(root.get_span_context().span_id) in {
        s["span_id"] for s in body["spans"] if s["parent_span_id"] is None
    }


def test_an_answer_is_rendered_and_nothing_in_it_can_run(r: redis.Redis) -> None:
    store = TaskStore(r)
    hostile = (
        "# Findings\n\n**bold** and `code`\n\n"
        "<script>alert('x')</script>\n\n"
        '<img src="x" onerror="alert(1)">\n\n'
        "[click](javascript:alert(1)) [ok](https://example.org/)\n\n"
        '<a href="#" onclick="alert(2)">raw link</a>\n'
    )
    record = TaskRecord(
        id=new_id(),
        text="t",
        status=TaskStatus.SUCCEEDED,
        result=hostile,
        limits=TaskLimits(max_steps=3, token_budget=1000, timeout_s=60),
    )
    store.create(record, limit=10)

    reply = _client(store).get(f"/dashboard/tasks/{record.id}/answer", headers=AUTH)

    html = reply.json()["html"]
    assert "<h1>Findings</h1>" in html and "<strong>bold</strong>" in html
    elements = _elements(html)
    assert {tag for tag, _ in elements} <= {"h1", "p", "strong", "code", "a"}
    attributes = [(name, value or "") for _, attrs in elements for name, value in attrs]
    assert not [name for name, _ in attributes if name.startswith("on")]
    assert [value for name, value in attributes if name == "href"] == ["https://example.org/"]
    # What would have run is there to read, as text.
    assert "&lt;script&gt;alert('x')&lt;/script&gt;" in html
    assert '&lt;img src="x" onerror="alert(1)"&gt;' in html
    assert 'rel="noopener noreferrer nofollow"' in html


def _elements(html: str) -> list[tuple[str, list[tuple[str, str | None]]]]:
    found: list[tuple[str, list[tuple[str, str | None]]]] = []

    class Collect(HTMLParser):
        def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
            found.append((tag, attrs))

    Collect().feed(html)
    return found


def test_the_sanitiser_holds_even_if_markdown_lets_html_through() -> None:
    # Raw HTML is off in the renderer; the sanitiser is the second wall on its own.
    assert render_markdown("plain") == "<p>plain</p>\n"
    nested = "<svg><script>alert(1)</script></svg>"
    assert "<svg" not in render_markdown(nested) and "<script" not in render_markdown(nested)


def test_unknown_tasks_and_unfinished_answers(r: redis.Redis) -> None:
    store = TaskStore(r)
    record = TaskRecord(
        id=new_id(), text="t", limits=TaskLimits(max_steps=3, token_budget=1000, timeout_s=60)
    )
    store.create(record, limit=10)
    client = _client(store)
    assert client.get(f"/dashboard/tasks/{record.id}/answer", headers=AUTH).json()["html"] is None
    reply = client.get("/dashboard/tasks/nope/answer", headers=AUTH)
    assert reply.status_code == 404 and "unknown task id" in reply.json()["detail"]


def test_queue_depths_count_each_roles_waiting_messages(r: redis.Redis) -> None:
    for _ in range(3):
        r.lpush(Role.RESEARCHER.queue, "m")
    r.lpush(Role.CODER.queue + "\x06\x166", "prioritised")
    reply = _client(TaskStore(r)).get("/dashboard/queues", headers=AUTH)
    assert reply.json() == {"researcher": 3, "coder": 1}


def test_the_page_is_served_without_the_token_and_its_data_only_with_it(r: redis.Redis) -> None:
    client = _client(TaskStore(r))

    for path in ("/", "/ui"):
        root = client.get(path, follow_redirects=False)
        assert root.status_code == 307 and root.headers["location"] == "/ui/"
    for path, kind in (
        ("/ui/", "text/html"),
        ("/ui/app.js", "text/javascript"),
        ("/ui/style.css", "text/css"),
    ):
        reply = client.get(path)
        assert reply.status_code == 200 and reply.headers["content-type"].startswith(kind)
        assert reply.headers["content-security-policy"] == CONTENT_SECURITY_POLICY
        assert reply.headers["x-content-type-options"] == "nosniff"
    assert (
        "script-src 'self'" in CONTENT_SECURITY_POLICY
        and "unsafe-inline" not in CONTENT_SECURITY_POLICY
    )
    assert client.get("/ui/../store.py").status_code in {401, 404}
    assert client.get("/ui/nothing.js").status_code == 404
    for path in ("/dashboard/tasks", "/dashboard/queues", "/dashboard/tasks/x/answer"):
        assert client.get(path).status_code == 401, path
