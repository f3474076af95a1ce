"""Every service asks for a credential: the API's bearer token and the broker's ACL
users, attacked through the same paths a caller inside the mesh would use."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest
import redis
from agentmesh_shared.memory import MemoryAuthError, MemoryClient

from tests.support.mesh import LocalMesh


def test_the_api_refuses_calls_without_the_token_with_a_sentence(mesh: LocalMesh) -> None:
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "Basic eDp5"}):
        for method, path in (
            ("GET", "/tasks"),
            ("POST", "/tasks"),
            ("GET", "/workers"),
            ("GET", "/deadletter"),
            ("GET", "/openapi.json"),
            ("GET", "/dashboard/tasks"),
            ("GET", "/dashboard/queues"),
            ("GET", "/dashboard/tasks/x/answer"),
        ):
            reply = httpx.request(method, f"{mesh.api_url}{path}", headers=headers, json={})
            assert reply.status_code == 401, (method, path, headers, reply.text)
            assert reply.headers["www-authenticate"].startswith("Bearer")
            assert "secrets/api_token" in reply.json()["detail"]
    # The probes stay open; readiness tells an anonymous caller nothing but its verdict.
    assert httpx.get(f"{mesh.api_url}/healthz").json() == {"status": "ok"}
    assert httpx.get(f"{mesh.api_url}/readyz").json() == {"status": "ready"}
    assert mesh.api.get("/readyz").json()["checks"]["redis"] == "ok"
    assert mesh.api.get("/tasks").status_code == 200


def test_the_cli_finds_the_token_or_says_where_to_put_it(mesh: LocalMesh, tmp_path: Path) -> None:
    token_file = tmp_path / "token"
    token_file.write_text(mesh.api_token + "\n")
    env = {"AGENTMESH_API_TOKEN": ""}
    refused = mesh.cli("list", env=env, cwd=tmp_path)
    assert refused.returncode == 7, refused.stderr
    assert "secrets/api_token" in refused.stderr and "Traceback" not in refused.stderr
    by_flag = mesh.cli("--token-file", str(token_file), "list", env=env, cwd=tmp_path)
    assert by_flag.returncode == 0, by_flag.stderr
    (tmp_path / "secrets").mkdir()
    (tmp_path / "secrets" / "api_token").write_text(mesh.api_token)
    by_checkout = mesh.cli("list", env=env, cwd=tmp_path)
    assert by_checkout.returncode == 0, by_checkout.stderr
    missing = mesh.cli("--token-file", str(tmp_path / "nope"), "list", env=env, cwd=tmp_path)
    assert missing.returncode == 2 and "cannot read the API token file" in missing.stderr


def _as(mesh: LocalMesh, user: str) -> redis.Redis:
    return redis.Redis.from_url(mesh.role_redis_url(user, with_password=True))


def test_the_broker_refuses_anonymous_and_wrong_passwords(mesh: LocalMesh) -> None:
    anonymous = redis.Redis(host="127.0.0.1", port=mesh.redis_port)
    with pytest.raises(redis.AuthenticationError):
        anonymous.get("agentmesh:tasks")
    wrong = redis.Redis(host="127.0.0.1", port=mesh.redis_port, username="coder", password="x")
    with pytest.raises(redis.AuthenticationError):
        wrong.ping()


@pytest.mark.parametrize("user", ["researcher", "coder"])
def test_a_worker_user_cannot_reach_beyond_its_role(mesh: LocalMesh, user: str) -> None:
    done = mesh.cli("submit", "Tell me about the mesh", "--wait", "--json")
    assert done.returncode == 0, done.stderr
    task_id = json.loads(done.stdout)["id"]
    worker = _as(mesh, user)
    other_queue = "research" if user == "coder" else "code"
    attacks = {
        "FLUSHALL": worker.flushall,
        "CONFIG GET": lambda: worker.config_get("requirepass"),
        "KEYS": lambda: worker.keys("*"),
        "SCAN": lambda: worker.scan(0),
        "ACL LIST": worker.acl_list,
        "MONITOR": lambda: worker.execute_command("MONITOR"),
        "SHUTDOWN": lambda: worker.execute_command("SHUTDOWN", "NOSAVE"),
        "read a task record": lambda: worker.get(f"agentmesh:task:{task_id}"),
        "read a checkpoint": lambda: worker.get(f"agentmesh:task:{task_id}:checkpoint"),
        "list the tasks": lambda: worker.zrange("agentmesh:tasks", 0, -1),
        "cancel a task": lambda: worker.set(f"agentmesh:task:{task_id}:cancel", "1"),
        "push to the other role's queue": lambda: worker.lpush(other_queue, "{}"),
        "drain the other role's queue": lambda: worker.lpop(other_queue),
        "read the other role's reserved messages": lambda: worker.hgetall(f"unacked:{other_queue}"),
        "read a shared reserved-message hash": lambda: worker.hgetall("unacked"),
    }
    for name, attack in attacks.items():
        with pytest.raises(redis.exceptions.NoPermissionError):
            attack()
            pytest.fail(f"{user} could {name}")
    # DEBUG is also off server-wide; the ACL refuses it too.
    dry = mesh.redis().execute_command("ACL", "DRYRUN", user, "DEBUG", "SLEEP", "0")
    assert "no permissions" in str(dry), dry
    # What the role needs still works.
    assert worker.exists(f"agentmesh:task:{task_id}:cancel") == 0
    own_queue = "code" if user == "coder" else "research"
    assert isinstance(worker.hgetall(f"unacked:{own_queue}"), dict)
    assert mesh.redis().get(f"agentmesh:task:{task_id}") is not None


def test_the_health_user_can_only_ping(mesh: LocalMesh) -> None:
    health = _as(mesh, "health")
    assert health.ping()
    with pytest.raises(redis.exceptions.NoPermissionError):
        health.get("agentmesh:tasks")
    with pytest.raises(redis.exceptions.NoPermissionError):
        health.info()


def test_the_orchestrator_user_cannot_administer_the_broker(mesh: LocalMesh) -> None:
    orchestrator = _as(mesh, "orchestrator")
    assert orchestrator.zcard("agentmesh:tasks") >= 0
    for attack in (
        orchestrator.flushall,
        lambda: orchestrator.config_set("appendonly", "no"),
        lambda: orchestrator.keys("*"),
        lambda: orchestrator.get("unacked"),
    ):
        with pytest.raises(redis.exceptions.NoPermissionError):
            attack()


def test_the_memory_gate_refuses_requests_without_the_token(mesh: LocalMesh) -> None:
    heartbeat = f"{mesh.chroma_url}/v1/heartbeat"
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "Basic eDp5"}):
        refused = httpx.get(heartbeat, headers=headers)
        assert refused.status_code == 401, refused.text
        assert "chroma_token" in refused.json()["detail"]
        assert refused.headers["www-authenticate"].startswith("Bearer")
    listing = httpx.get(f"{mesh.chroma_url}/v1/collections/agentmesh-memory/count")
    assert listing.status_code == 401
    allowed = httpx.get(heartbeat, headers={"Authorization": f"Bearer {mesh.chroma_token}"})
    assert allowed.status_code == 200, allowed.text
    assert httpx.get(f"{mesh.chroma_url}/healthz").json() == {"status": "ok"}


def test_the_memory_client_sends_the_token_and_without_it_is_refused(mesh: LocalMesh) -> None:
    with_token = MemoryClient(mesh.chroma_url, "gate-test", token=mesh.chroma_token)
    with_token.store("n1", "the gate forwards writes", {"task_id": "gate"})
    assert with_token.get("n1") is not None
    without = MemoryClient(mesh.chroma_url, "gate-test", attempts=1)
    assert not without.heartbeat()
    with pytest.raises(MemoryAuthError, match="chroma_token"):
        without.get("n1")
