"""Egress and the model gateway, attacked through the running mesh.

The outside world (tests/e2e/compose.outside.yaml) is an HTTP server on a network
only the egress proxy joins, under allowed.example.test (in AGENTMESH_FETCH_ALLOWLIST),
denied.example.test, and model.example.test (the model's host as the proxy sees it).
Fetches are driven through the real path: CLI -> API -> planner -> researcher ->
egress proxy; the scripted researcher fetches the URL its instruction holds.
"""

from __future__ import annotations

import json
import subprocess
import time
from typing import Any

import httpx
import pytest

from tests.e2e.conftest import OUTSIDE_IP, ComposeMesh

AGENTS = (
    "orchestrator",
    "planner",
    "researcher",
    "coder",
    "gateway",
    "llm",
    "memory-gate",
    "mcp-fetch",
    "mcp-git",
    "mcp-time",
)


def _python(mesh: ComposeMesh, service: str, code: str) -> dict[str, Any]:
    """Run ``code`` (which prints one JSON line last) in the service's container."""
    proc = mesh.compose("exec", "-T", service, "python", "-", input_text=code, check=False)
    assert proc.returncode == 0, proc.stderr + proc.stdout
    result: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result


def _researcher_result(mesh: ComposeMesh, text: str) -> tuple[dict[str, Any], str]:
    done = mesh.cli("submit", text, "--wait", "--json")
    assert done.returncode == 0, done.stderr + done.stdout
    task: dict[str, Any] = json.loads(done.stdout)
    research = next(s for s in task["subtasks"] if s["role"] == "researcher")
    return task, str(research["result"] or research["error"])


def test_an_allowed_host_is_fetched_through_the_proxy(compose_mesh: ComposeMesh) -> None:
    task, research = _researcher_result(
        compose_mesh, "Read http://allowed.example.test/news and summarise it"
    )
    assert task["status"] == "succeeded"
    assert "HTTP 200" in research and "page /news served to allowed.example.test" in research
    logs = compose_mesh.compose("logs", "--no-color", "egress", check=False).stdout
    assert "user=researcher method=GET url=http://allowed.example.test/news status=200" in logs


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        (
            "http://denied.example.test/secret",
            "denied.example.test is not in AGENTMESH_FETCH_ALLOWLIST",
        ),
        (
            "http://allowed.example.test/to-denied",
            "denied.example.test is not in AGENTMESH_FETCH_ALLOWLIST",
        ),
        ("http://allowed.example.test/to-metadata", "169.254.169.254 is an IP literal"),
        ("http://allowed.example.test/to-mesh", "orchestrator is one of the mesh's own services"),
        (f"http://{OUTSIDE_IP}/", f"{OUTSIDE_IP} is an IP literal"),
        ("http://169.254.169.254/latest/meta-data/", "169.254.169.254 is an IP literal"),
        ("http://orchestrator:8080/tasks", "orchestrator is one of the mesh's own services"),
    ],
)
def test_refused_fetches_say_why(compose_mesh: ComposeMesh, url: str, reason: str) -> None:
    task, research = _researcher_result(compose_mesh, f"Read {url} and summarise it")
    assert task["status"] == "succeeded", task
    assert "refused http" in research and reason in research, research


PROXY_PROBE = """
import json, pathlib, urllib.parse, httpx
secret = pathlib.Path("/run/secrets/agentmesh_egress_password")
user = {user!r}
auth = ""
if user and secret.exists():
    auth = user + ":" + urllib.parse.quote(secret.read_text().strip(), safe="") + "@"
out = {{}}
for url in {urls!r}:
    try:
        r = httpx.get(url, proxy=f"http://{{auth}}egress:3128", trust_env=False, timeout=10)
        out[url] = r.status_code
    except httpx.HTTPError as err:
        out[url] = type(err).__name__
print(json.dumps(out))
"""


def _through_proxy(mesh: ComposeMesh, service: str, user: str, urls: list[str]) -> dict[str, Any]:
    return _python(mesh, service, PROXY_PROBE.format(user=user, urls=urls))


def test_the_proxy_tells_its_clients_apart(compose_mesh: ComposeMesh) -> None:
    allowed, model = "http://allowed.example.test/", "http://model.example.test/"
    denied = "http://denied.example.test/"
    # The researcher's user: its allowlist only, never the model's host.
    assert _through_proxy(compose_mesh, "researcher", "researcher", [allowed, model, denied]) == {
        allowed: 200,
        model: 403,
        denied: 403,
    }
    # The gateway's user: the model's host only, not the researcher's hosts.
    assert _through_proxy(compose_mesh, "gateway", "gateway", [model, allowed]) == {
        model: 200,
        allowed: 403,
    }
    # No credential (the coder has none): asked to log in, nothing passes.
    assert _through_proxy(compose_mesh, "coder", "", [allowed, model]) == {allowed: 407, model: 407}
    # Private and link-local destinations and IP literals: refused even for a known user.
    mesh_urls = [
        "http://orchestrator:8080/tasks",
        "http://169.254.169.254/latest/meta-data/",
        f"http://{OUTSIDE_IP}/",
    ]
    assert set(_through_proxy(compose_mesh, "researcher", "researcher", mesh_urls).values()) == {
        403
    }


NO_ROUTE_PROBE = """
import json, socket
out = {}
for name, target in {"outside by address": ("OUTSIDE_IP", 80),
                     "outside by name": ("allowed.example.test", 80),
                     "internet": ("1.1.1.1", 443)}.items():
    try:
        socket.create_connection(target, timeout=3).close()
        out[name] = "connected"
    except OSError as err:
        out[name] = type(err).__name__
print(json.dumps(out))
"""


@pytest.mark.parametrize("service", AGENTS)
def test_no_container_but_the_proxy_has_a_route_out(
    compose_mesh: ComposeMesh, service: str
) -> None:
    found = _python(compose_mesh, service, NO_ROUTE_PROBE.replace("OUTSIDE_IP", OUTSIDE_IP))
    assert "connected" not in found.values(), found
    for container in compose_mesh.containers(service):
        networks = compose_mesh.inspect(container)["NetworkSettings"]["Networks"]  # type: ignore[index]
        assert networks, container
        for network in networks:
            assert _internal(network), (service, network)


def _internal(network: str) -> bool:
    proc = subprocess.run(
        ["docker", "network", "inspect", network], capture_output=True, text=True, check=True
    )
    return bool(json.loads(proc.stdout)[0]["Internal"])


def compose_mesh_project(mesh: ComposeMesh) -> str:
    return mesh.base[mesh.base.index("-p") + 1]


def test_only_the_proxy_is_on_a_network_with_a_route_out(compose_mesh: ComposeMesh) -> None:
    project = compose_mesh_project(compose_mesh)
    names = ("mesh", "edge", "outside", "memory-clients", "memory-store", "mcp-tools", "mcp-egress")
    internal = {name: _internal(f"{project}_{name}") for name in names}
    assert internal == {
        "mesh": True,
        "edge": False,
        "outside": True,
        "memory-clients": True,
        "memory-store": True,
        "mcp-tools": True,
        "mcp-egress": True,
    }
    (egress,) = compose_mesh.containers("egress")
    networks = compose_mesh.inspect(egress)["NetworkSettings"]["Networks"]  # type: ignore[index]
    assert set(networks) == {f"{project}_{n}" for n in ("mesh", "edge", "outside", "mcp-egress")}


def test_the_published_api_answers_through_the_proxy(compose_mesh: ComposeMesh) -> None:
    url = f"http://127.0.0.1:{compose_mesh.api_port}/healthz"
    response = httpx.get(url, timeout=30, trust_env=False)
    assert response.status_code == 200 and response.json()["status"] == "ok"
    # The ingress port reaches the API and nothing else: a request for another host
    # (an absolute URL, as to a forward proxy) is answered by the API itself.
    with httpx.Client(proxy=f"http://127.0.0.1:{compose_mesh.api_port}", trust_env=False) as c:
        for url in ("http://allowed.example.test/tasks", "http://broker:6379/tasks"):
            answer = c.get(url, timeout=30)
            # The API's own refusal (no token sent): not the other host's answer.
            assert answer.status_code == 401 and "API token" in answer.json()["detail"], url
        # The other host's front page is the API's own: the redirect to the dashboard.
        front = c.get("http://allowed.example.test/", timeout=30)
        assert (front.status_code, front.headers.get("location")) == (307, "/ui/"), front.text


GATEWAY_PROBE = """
import json, os, pathlib, httpx
out = {}
def call(key):
    r = httpx.post("http://gateway:8070/v1/messages", headers={"x-api-key": key},
                   json={"model": "m", "max_tokens": 8, "messages": [{"role": "user", "content": "hi"}]},
                   trust_env=False, timeout=60)
    return "ok" if r.status_code == 200 else f"{r.status_code} {r.text}"
out["vendor key mounted"] = pathlib.Path("/run/secrets/anthropic_api_key").exists()
out["env key"] = bool(os.environ.get("ANTHROPIC_API_KEY"))
out["guessed key"] = call("sk-ant-guessed")
out["own token"] = call(pathlib.Path("/run/secrets/agentmesh_gateway_token").read_text().strip())
print(json.dumps(out))
"""


@pytest.mark.parametrize("service", ("orchestrator", "researcher", "coder"))
def test_agents_hold_no_vendor_key_and_the_gateway_refuses_strangers(
    compose_mesh: ComposeMesh, service: str
) -> None:
    found = _python(compose_mesh, service, GATEWAY_PROBE)
    assert found["vendor key mounted"] is False and found["env key"] is False
    assert found["guessed key"].startswith("401 "), found
    assert "unknown credential" in found["guessed key"]
    assert found["own token"] == "ok"


USAGE_PROBE = """
import json, pathlib, httpx
token = pathlib.Path("/run/secrets/agentmesh_gateway_token").read_text().strip()
r = httpx.get("http://gateway:8070/usage", params={{"task": {task!r}}},
              headers={{"x-api-key": token}}, trust_env=False, timeout=10)
anonymous = httpx.get("http://gateway:8070/usage", trust_env=False, timeout=10).status_code
print(json.dumps({{"status": r.status_code, "body": r.json(), "anonymous": anonymous}}))
"""

STREAM_PROBE = """
import json, pathlib, anthropic
token = pathlib.Path("/run/secrets/agentmesh_gateway_token").read_text().strip()
client = anthropic.Anthropic(api_key=token, base_url="http://gateway:8070", max_retries=0)
events = 0
with client.messages.stream(model="m", max_tokens=64,
                            messages=[{"role": "user", "content": "stream me"}]) as stream:
    for _ in stream:
        events += 1
    final = stream.get_final_message()
print(json.dumps({"events": events, "text": final.content[0].text,
                  "output_tokens": final.usage.output_tokens}))
"""


def test_the_gateway_streams_records_usage_per_role_and_joins_the_trace(
    compose_mesh: ComposeMesh,
) -> None:
    streamed = _python(compose_mesh, "coder", STREAM_PROBE)
    assert streamed["events"] > 3 and "stream me" in streamed["text"]
    assert streamed["output_tokens"] > 0

    done = compose_mesh.cli("submit", "Gateway accounting check", "--wait", "--json")
    assert done.returncode == 0, done.stderr
    task = json.loads(done.stdout)
    usage = _python(compose_mesh, "orchestrator", USAGE_PROBE.format(task=task["id"]))
    assert usage["status"] == 200 and usage["anonymous"] == 401
    per_task = usage["body"]["task"]
    for role in ("orchestrator", "researcher", "coder"):
        assert per_task[f"{role}.calls"] >= 1, per_task
        assert per_task[f"{role}.input_tokens"] > 0, per_task
    assert usage["body"]["roles"]["coder"]["output_tokens"] >= streamed["output_tokens"]
    # Every model call the task's trace shows was answered in the gateway, in this trace.
    # The gateway exports its spans in batches: wait until they are all in.
    deadline = time.monotonic() + 90
    while True:
        shown = compose_mesh.cli("trace", task["id"], "--json", "--wait", "30")
        assert shown.returncode == 0, shown.stderr
        spans = json.loads(shown.stdout)["spans"]
        hops = [s for s in spans if s["service"] == "gateway"]
        chats = [s for s in spans if s["name"].startswith("chat ")]
        if len(hops) >= len(chats) >= 3 or time.monotonic() > deadline:
            break
        time.sleep(2)
    by_id = {s["span_id"]: s for s in spans}
    assert len(hops) == len(chats) >= 3, [s["name"] for s in spans]
    for hop in hops:
        assert hop["name"].startswith("gateway ")
        assert by_id[hop["parent_span_id"]]["name"].startswith("chat ")
        assert hop["attributes"]["agentmesh.task_id"] == task["id"]
