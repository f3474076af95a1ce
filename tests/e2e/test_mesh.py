"""The real compose mesh: a task end to end, scaling, and hardening proven from inside."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tests.e2e.conftest import ComposeMesh

PROBE = (Path(__file__).parent / "hardening_probe.py").read_text()
AGENT_SERVICES = (
    "orchestrator",
    "planner",
    "researcher",
    "coder",
    "llm",
    "gateway",
    "memory-gate",
    "sandbox",
    "mcp-fetch",
    "mcp-git",
    "mcp-time",
)


def test_a_task_runs_end_to_end_in_containers(compose_mesh: ComposeMesh) -> None:
    done = compose_mesh.cli("submit", "Tell me about the mesh", "--wait", "--json")
    assert done.returncode == 0, done.stderr + done.stdout
    task = json.loads(done.stdout)
    assert task["status"] == "succeeded"
    assert {s["role"] for s in task["subtasks"]} == {"researcher", "coder"}
    hostnames = {
        str(compose_mesh.inspect(c)["Config"]["Hostname"])  # type: ignore[index]
        for service in ("researcher", "coder")
        for c in compose_mesh.containers(service)
    }
    for sub in task["subtasks"]:
        assert sub["status"] == "succeeded"
        assert sub["worker"] in hostnames
    coder = next(s for s in task["subtasks"] if s["role"] == "coder")
    assert coder["artifacts"]["runs"][0]["exit_code"] == 0
    assert task["usage"]["input_tokens"] > 0 and len(task["trace_id"]) == 32


@pytest.mark.parametrize("service", AGENT_SERVICES)
def test_hardening_is_real_inside_every_agent_container(
    compose_mesh: ComposeMesh, service: str
) -> None:
    containers = compose_mesh.containers(service)
    assert containers, f"no {service} container"
    for container in containers:
        extra = ["sandbox"] if service == "sandbox" else []
        probe = compose_mesh.compose(
            "exec", "-T", service, "python3", "-", *extra, input_text=PROBE, check=False
        )
        report = json.loads(probe.stdout)
        failed = {k: v for k, v in report["checks"].items() if not v["ok"]}
        assert report["ok"] and probe.returncode == 0, failed

        info = compose_mesh.inspect(container)
        host = info["HostConfig"]
        assert isinstance(host, dict)
        assert host["CapDrop"] == ["ALL"] or "ALL" in host["CapDrop"]
        assert not host.get("CapAdd")
        assert host["ReadonlyRootfs"] is True
        opts = host["SecurityOpt"]
        assert "no-new-privileges:true" in opts
        seccomp = next(o for o in opts if o.startswith("seccomp="))
        assert json.loads(seccomp.removeprefix("seccomp="))["defaultAction"] == "SCMP_ACT_ERRNO"
        assert host["Memory"] > 0 and host["NanoCpus"] > 0 and host["PidsLimit"] > 0
        user = info["Config"]["User"]  # type: ignore[index]
        assert user and not str(user).startswith(("0", "root"))


def test_only_the_egress_proxy_publishes_and_only_on_loopback(compose_mesh: ComposeMesh) -> None:
    services = (
        "orchestrator",
        "planner",
        "broker",
        "memory",
        "otel-collector",
        "researcher",
        "coder",
        "memory-gate",
    )
    for service in (*services, "llm", "gateway", "sandbox", "mcp-fetch", "mcp-git", "mcp-time"):
        for container in compose_mesh.containers(service):
            ports = compose_mesh.inspect(container)["NetworkSettings"]["Ports"]  # type: ignore[index]
            assert not any(bindings for bindings in (ports or {}).values()), (service, ports)
    (container,) = compose_mesh.containers("egress")
    ports = compose_mesh.inspect(container)["NetworkSettings"]["Ports"]  # type: ignore[index]
    for port in ("8080/tcp", "5555/tcp"):
        assert [b["HostIp"] for b in ports[port]] == ["127.0.0.1"], ports


def test_scaled_workers_are_listed_and_share_the_load(compose_mesh: ComposeMesh) -> None:
    compose_mesh.compose(
        "up", "-d", "--no-recreate", "--scale", "researcher=3", "--scale", "coder=2"
    )
    compose_mesh.wait_healthy()
    assert len(compose_mesh.containers("researcher")) == 3
    assert len(compose_mesh.containers("coder")) == 2

    def live_workers() -> list[dict[str, object]]:
        out = compose_mesh.cli("workers", "--json")
        assert out.returncode == 0, out.stderr
        listed: list[dict[str, object]] = json.loads(out.stdout)
        return listed

    workers = live_workers()
    assert sum(w["role"] == "researcher" for w in workers) == 3, workers
    assert sum(w["role"] == "coder" for w in workers) == 2, workers

    with ThreadPoolExecutor(max_workers=8) as pool:
        runs = list(
            pool.map(
                lambda i: compose_mesh.cli("submit", f"batch task {i}", "--wait", "--json"),
                range(8),
            )
        )
    tasks = [json.loads(r.stdout) for r in runs]
    assert all(t["status"] == "succeeded" for t in tasks), [r.stderr for r in runs]
    researchers = {s["worker"] for t in tasks for s in t["subtasks"] if s["role"] == "researcher"}
    assert len(researchers) >= 2, researchers
