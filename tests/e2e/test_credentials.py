"""Every service asks for a credential, proven against the running compose mesh.

The attacks run as code inside the agent containers (the worker's own uid, the
position model-written code or a fetched page steering an agent would have), through
the same network paths, and from the host against what is published.
"""

from __future__ import annotations

import base64
import json
import subprocess

import httpx

from tests.e2e.conftest import ROOT, ComposeMesh
from tests.support.mesh import wait_until

SECRETS = ROOT / "secrets"


def _secret(name: str) -> str:
    return (SECRETS / name).read_text().strip()


def run_in(mesh: ComposeMesh, service: str, code: str) -> dict[str, object]:
    """Run ``code`` with python inside ``service``; it prints one JSON object."""
    out = mesh.compose("exec", "-T", service, "python3", "-", input_text=code, check=False)
    assert out.returncode == 0, out.stderr + out.stdout
    result: dict[str, object] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


HTTP_PROBE = """
import json, os, urllib.error, urllib.request as r
def get(url, token=None):
    req = r.Request(url, headers={"Authorization": "Bearer " + token} if token else {})
    try:
        with r.build_opener(r.ProxyHandler({})).open(req, timeout=5) as resp:
            return resp.status
    except urllib.error.HTTPError as err:
        return err.code
    except OSError as err:
        return type(err).__name__
def secret(name):
    try:
        return open("/run/secrets/" + name).read().strip()
    except OSError:
        return None
"""


def test_the_api_wants_its_token_from_the_host_and_the_cli_finds_it(
    compose_mesh: ComposeMesh,
) -> None:
    api = f"http://127.0.0.1:{compose_mesh.api_port}"
    refused = httpx.get(f"{api}/tasks")
    assert refused.status_code == 401
    assert refused.headers["www-authenticate"].startswith("Bearer")
    assert "secrets/api_token" in refused.json()["detail"]
    assert httpx.get(f"{api}/tasks", headers={"Authorization": "Bearer nope"}).status_code == 401
    assert httpx.get(f"{api}/healthz").json() == {"status": "ok"}
    assert httpx.get(f"{api}/readyz").json() == {"status": "ready"}
    token = {"Authorization": f"Bearer {_secret('api_token')}"}
    assert httpx.get(f"{api}/tasks", headers=token).status_code == 200
    # The CLI in the orchestrator container reads /run/secrets/api_token.
    listed = compose_mesh.cli("list", "--json")
    assert listed.returncode == 0, listed.stderr


def test_a_worker_cannot_read_the_api_without_the_token_and_holds_none(
    compose_mesh: ComposeMesh,
) -> None:
    for service in ("researcher", "coder"):
        found = run_in(
            compose_mesh,
            service,
            HTTP_PROBE + "print(json.dumps({'tasks': get('http://orchestrator:8080/tasks'),"
            " 'workers': get('http://orchestrator:8080/workers'),"
            " 'secrets': sorted(os.listdir('/run/secrets'))}))",
        )
        assert found["tasks"] == 401 and found["workers"] == 401, found
        secrets = found["secrets"]
        assert isinstance(secrets, list)
        assert "api_token" not in secrets and "flower_basic_auth" not in secrets, secrets
        assert not [s for s in secrets if s.startswith("redis_") and s != "redis_password"]


def test_memory_is_reached_only_through_the_gate_and_only_with_the_token(
    compose_mesh: ComposeMesh,
) -> None:
    found = run_in(
        compose_mesh,
        "researcher",
        HTTP_PROBE + "hb = '/v1/heartbeat'\n"
        "chroma = '/api/v2/tenants/default_tenant/databases/default_database/collections'\n"
        "print(json.dumps({'direct': get('http://memory:8000/api/v2/heartbeat'),"
        " 'anonymous': get('http://memory-gate:8000' + hb),"
        " 'wrong': get('http://memory-gate:8000' + hb, 'wrong'),"
        " 'count': get('http://memory-gate:8000/v1/collections/agentmesh-memory/count'),"
        " 'chroma_api': get('http://memory-gate:8000' + chroma, secret('chroma_token')),"
        " 'token': get('http://memory-gate:8000' + hb, secret('chroma_token'))}))",
    )
    # Chroma itself is on a network only the gate shares: not even resolvable.
    assert found["direct"] in {"URLError", "gaierror", "OSError", "TimeoutError"}, found
    assert found["anonymous"] == 401 and found["wrong"] == 401 and found["count"] == 401
    assert found["token"] == 200, found
    # With the token, an agent gets the memory API, not Chroma's (no listing, no delete).
    assert found["chroma_api"] == 404, found
    # A container that is not a memory client cannot reach the gate at all.
    outsider = run_in(
        compose_mesh,
        "llm",
        HTTP_PROBE + "print(json.dumps({'gate': get('http://memory-gate:8000/healthz')}))",
    )
    assert outsider["gate"] in {"URLError", "gaierror", "OSError", "TimeoutError"}, outsider


REDIS_PROBE = """
import json, redis
password = open("/run/secrets/redis_password").read().strip()
user = "{user}"
def attempt(fn):
    try:
        fn()
        return "allowed"
    except redis.exceptions.NoPermissionError:
        return "refused"
    except redis.exceptions.AuthenticationError:
        return "auth refused"
    except redis.exceptions.ResponseError as err:
        return "error: " + str(err)[:80]
mine = redis.Redis(host="broker", username=user, password=password)
anonymous = redis.Redis(host="broker")
print(json.dumps({{
    "ping": attempt(mine.ping),
    "anonymous get": attempt(lambda: anonymous.get("agentmesh:tasks")),
    "default user": attempt(lambda: redis.Redis(host="broker", password=password).ping()),
    "flushall": attempt(mine.flushall),
    "config": attempt(lambda: mine.config_get("*")),
    "keys": attempt(lambda: mine.keys("*")),
    "task index": attempt(lambda: mine.zrange("agentmesh:tasks", 0, -1)),
    "task record": attempt(lambda: mine.get("agentmesh:task:{task_id}")),
    "other queue": attempt(lambda: mine.lpush("{other}", "{{}}")),
    "other reserved": attempt(lambda: mine.hgetall("unacked:{other}")),
}}))
"""


def test_each_role_redis_user_can_do_only_its_part(compose_mesh: ComposeMesh) -> None:
    done = compose_mesh.cli("submit", "Tell me about the mesh", "--wait", "--json")
    assert done.returncode == 0, done.stderr
    task_id = json.loads(done.stdout)["id"]
    for service, other in (("researcher", "code"), ("coder", "research")):
        found = run_in(
            compose_mesh,
            service,
            REDIS_PROBE.format(user=service, task_id=task_id, other=other),
        )
        assert found["ping"] == "allowed", found
        assert found["anonymous get"] == "auth refused" or "NOAUTH" in str(found["anonymous get"])
        assert found["default user"] == "auth refused", found
        for attack in (
            "flushall",
            "config",
            "keys",
            "task index",
            "task record",
            "other queue",
            "other reserved",
        ):
            assert found[attack] == "refused", (service, attack, found)


def test_no_password_is_on_a_command_line_or_in_the_broker_config(
    compose_mesh: ComposeMesh,
) -> None:
    values = [_secret(f"redis_{u}_password") for u in ("orchestrator", "researcher", "coder")]
    values += [_secret("redis_health_password"), _secret("api_token"), _secret("chroma_token")]
    for service in ("broker", "orchestrator", "researcher", "coder", "memory-gate"):
        for container in compose_mesh.containers(service):
            info = json.dumps(compose_mesh.inspect(container))
            assert not [v for v in values if v in info], f"a secret in {service}'s inspect"
    (broker,) = compose_mesh.containers("broker")
    procs = subprocess.run(
        ["docker", "exec", broker, "sh", "-c", "cat /proc/[0-9]*/cmdline | tr '\\0' ' '"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "redis-server" in procs and not [v for v in values if v in procs]
    acl = subprocess.run(
        ["docker", "exec", broker, "cat", "/tmp/users.acl"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "user default off" in acl and not [v for v in values if v in acl]


def test_flower_asks_for_basic_auth(compose_mesh: ComposeMesh) -> None:
    compose_mesh.compose("--profile", "monitoring", "up", "-d", "flower")
    try:
        port = compose_mesh.env_file.read_text().split("AGENTMESH_FLOWER_PORT=")[1].split()[0]
        flower = f"http://127.0.0.1:{port}"
        wait_until(
            lambda: httpx.get(f"{flower}/healthcheck", timeout=5).is_success,
            "Flower to answer",
            timeout=120,
        )
        refused = httpx.get(f"{flower}/workers", timeout=10)
        assert refused.status_code == 401
        assert refused.headers["www-authenticate"].startswith("Basic")
        wrong = base64.b64encode(b"admin:wrong").decode()
        assert (
            httpx.get(
                f"{flower}/workers", headers={"Authorization": f"Basic {wrong}"}, timeout=10
            ).status_code
            == 401
        )
        user, password = _secret("flower_basic_auth").split(":", 1)
        allowed = httpx.get(f"{flower}/workers", auth=(user, password), timeout=10)
        assert allowed.status_code == 200
        assert httpx.get(f"{flower}/healthcheck", timeout=10).text == "OK"
    finally:
        compose_mesh.compose("--profile", "monitoring", "rm", "-s", "-f", "flower", check=False)
