"""Bad input gets a clear error and crashes nothing: API, CLI and the broker."""

from __future__ import annotations

import json
from urllib.parse import quote, urlsplit

from agentmesh_shared import deadletter, keys
from agentmesh_shared.models import TASK_NAME_BY_ROLE, Role
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from kombu import Connection, Exchange, Producer

from tests.support import junk
from tests.support.mesh import LocalMesh, wait_until


def test_api_rejects_bad_tasks_with_clear_errors(mesh: LocalMesh) -> None:
    api = mesh.api
    empty = api.post("/tasks", json={"text": "   "})
    assert empty.status_code == 422 and "text" in empty.json()["detail"]
    huge = api.post("/tasks", json={"text": "x" * 9000})
    assert huge.status_code == 422 and "AGENTMESH_MAX_TASK_CHARS" in huge.json()["detail"]
    unknown_field = api.post("/tasks", json={"text": "hi", "priority": 3})
    assert unknown_field.status_code == 422 and "priority" in unknown_field.json()["detail"]
    wrong_type = api.post("/tasks", json={"text": "hi", "max_steps": "many"})
    assert wrong_type.status_code == 422 and "max_steps" in wrong_type.json()["detail"]
    not_json = api.post("/tasks", content=b"{", headers={"content-type": "application/json"})
    assert not_json.status_code == 422
    missing = api.get("/tasks/does-not-exist")
    assert missing.status_code == 404 and "unknown task id" in missing.json()["detail"]
    beyond = api.get("/tasks/any/events", params={"after": "9" * 30})
    assert beyond.status_code == 422 and "stream id" in beyond.json()["detail"]
    assert api.get("/healthz").json() == {"status": "ok"}


def test_cli_errors_are_clear(mesh: LocalMesh) -> None:
    empty = mesh.cli("submit", "  ")
    assert empty.returncode == 2 and "empty" in empty.stderr
    huge = mesh.cli("submit", "-", input_text="y" * 9000)
    assert huge.returncode == 2 and "over the limit" in huge.stderr
    unknown = mesh.cli("status", "nope")
    assert unknown.returncode == 4 and "unknown task id 'nope'" in unknown.stderr
    unreachable = mesh.cli("--api", "http://127.0.0.1:9", "list")
    assert unreachable.returncode == 3 and "cannot reach the orchestrator API" in unreachable.stderr
    assert "Traceback" not in unreachable.stderr + unknown.stderr + huge.stderr


def test_malformed_broker_messages_are_dead_lettered_and_workers_keep_serving(
    mesh: LocalMesh,
) -> None:
    r = mesh.redis()
    r.delete(keys.DEAD_LETTER, keys.DEAD_LETTER_TOTAL)
    with Connection(mesh.redis_url) as conn:
        producer = Producer(conn)
        # 1. a valid Celery envelope whose payload is not a subtask
        producer.publish(
            [[{"task_id": "t", "what": "nonsense"}], {}, {}],
            routing_key="research",
            exchange=Exchange("research", type="direct"),
            serializer="json",
            headers={"lang": "py", "task": TASK_NAME_BY_ROLE[Role.RESEARCHER], "id": "bad-1"},
        )
        # 2. a task name no worker knows
        producer.publish(
            [[], {}, {}],
            routing_key="code",
            exchange=Exchange("code", type="direct"),
            serializer="json",
            headers={"lang": "py", "task": "agentmesh.unknown", "id": "bad-2"},
        )
        # 3. bytes that are not JSON at all
        producer.publish(
            b"\x00\xffnot json",
            routing_key="research",
            exchange=Exchange("research", type="direct"),
            content_type="application/json",
            content_encoding="utf-8",
            headers={"lang": "py", "task": TASK_NAME_BY_ROLE[Role.RESEARCHER], "id": "bad-3"},
        )

    # 4. every junk shape, raw on both queues, as a hostile producer would push it
    sent = junk.messages(len(junk.SHAPES) * 2, ["research", "code"])
    for _shape, queue, raw in sent:
        r.lpush(queue, raw)
    expected = 3 + len(sent)

    wait_until(
        lambda: deadletter.total(r) >= expected, f"{expected} dead-letter entries", timeout=60
    )
    assert deadletter.total(r) == expected
    reasons = [json.loads(e)["reason"] for e in r.lrange("agentmesh:deadletter", 0, -1)]
    assert any("invalid subtask payload" in x for x in reasons), reasons
    assert any("unknown task" in x for x in reasons), reasons
    assert any("undecodable" in x for x in reasons), reasons
    assert any("not a message envelope" in x for x in reasons), reasons
    listed = mesh.api.get("/deadletter").json()
    assert len(listed) == expected

    for name, proc in mesh.procs.items():
        assert proc.alive(), f"{name} died"
        # a consumer that died restarts in place (same pid): its log would say so
        assert "Unrecoverable error" not in proc.log_tail(100_000), f"{name}'s consumer died"
    done = mesh.cli("submit", "still serving?", "--wait", "--json")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["status"] == "succeeded"


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=30),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4)
    ),
    max_leaves=12,
)
bodies = st.one_of(
    json_values,
    st.fixed_dictionaries(
        {"text": st.one_of(st.text(max_size=50), st.integers(), st.none())},
        optional={
            "max_steps": json_values,
            "token_budget": json_values,
            "timeout_s": json_values,
            "extra": json_values,
        },
    ),
)


@settings(
    max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(body=bodies)
def test_any_json_body_gets_an_answer_never_a_server_error(mesh: LocalMesh, body: object) -> None:
    reply = mesh.api.post("/tasks", json=body, timeout=30)
    assert reply.status_code in {202, 422}, (body, reply.status_code, reply.text)
    detail = reply.json()
    if reply.status_code == 422:
        assert isinstance(detail["detail"], str) and detail["detail"].startswith("invalid request")
    else:
        assert detail["status"] == "queued" and detail["text"] == str(body["text"]).strip()  # type: ignore[index]


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(task_id=st.text(max_size=200))
@example(task_id="/")
@example(task_id="no-such-task/")
def test_any_task_id_is_found_or_cleanly_unknown(mesh: LocalMesh, task_id: str) -> None:
    reply = mesh.api.get(f"/tasks/{quote(task_id, safe='')}", timeout=30)
    # The router decodes %2F before it routes, and answers a path that ends in "/"
    # with a redirect to it without the slashes when that path has a route:
    # "/tasks/" to "/tasks", "/tasks/x%2F" to "/tasks/x".
    expected = {307} if task_id == "" else {200, 404, 405}
    if task_id.endswith("/"):
        expected.add(307)
    assert reply.status_code in expected, (task_id, reply.status_code, reply.text)
    if reply.status_code == 307:
        assert not urlsplit(reply.headers["location"]).path.endswith("/"), reply.headers
