"""MCP tool servers in the running mesh: the sidecars, the grants, faults and traces.

Tasks name the MCP tools the scripted model calls (``[[mcp <tool> {json}]]``); both
workers get the directives and call those they are offered, so each result shows
what a role was and was not granted (mcp.yaml: fetch to the researcher, git to the
coder). The fetch sidecar leaves through the egress proxy as its own user, on the
allowlist (tests/e2e/compose.outside.yaml's outside world); the git sidecar reads the
repository the tier's conftest creates, mounted read-only.
"""

from __future__ import annotations

import json
import time
from typing import Any

from tests.e2e.conftest import REPO_COMMIT_MESSAGE, ComposeMesh

FETCH_NEWS = '[[mcp fetch__fetch {"url": "http://allowed.example.test/news"}]]'
GIT_LOG = '[[mcp git__git_log {"repo_path": "/repos/demo", "max_count": 3}]]'


def _run(mesh: ComposeMesh, text: str) -> tuple[dict[str, Any], dict[str, str]]:
    done = mesh.cli("submit", text, "--wait", "--json")
    assert done.returncode == 0, done.stderr + done.stdout
    task: dict[str, Any] = json.loads(done.stdout)
    by_role = {s["role"]: str(s["result"] or s["error"]) for s in task["subtasks"]}
    return task, by_role


def _workers_mcp(mesh: ComposeMesh, role: str) -> list[dict[str, str]]:
    out = mesh.cli("workers", "--json")
    assert out.returncode == 0, out.stderr
    return [w["mcp"] for w in json.loads(out.stdout) if w["role"] == role]


def test_the_researcher_fetches_and_the_coder_reads_git_through_mcp_sidecars(
    compose_mesh: ComposeMesh,
) -> None:
    task, by_role = _run(compose_mesh, f"Summarise the news {FETCH_NEWS} and the log {GIT_LOG}")
    assert task["status"] == "succeeded", task
    research, code = by_role["researcher"], by_role["coder"]
    assert "fetch__fetch: Contents of http://allowed.example.test/news" in research, research
    assert "page /news served to allowed.example.test" in research, research
    assert REPO_COMMIT_MESSAGE in code, code
    # Both results reach the final answer.
    assert "page /news served to allowed.example.test" in task["result"], task["result"]
    assert REPO_COMMIT_MESSAGE in task["result"], task["result"]
    # A role not granted a server never sees its tools.
    assert "not offered to this role: git__git_log" in research, research
    assert "not offered to this role: fetch__fetch" in code, code
    # The fetch left through the egress proxy, as the sidecar's own proxy user.
    logs = compose_mesh.compose("logs", "--no-color", "egress", check=False).stdout
    assert "user=mcp-fetch method=GET url=http://allowed.example.test/news status=200" in logs


def test_the_mcp_hops_are_in_the_task_trace(compose_mesh: ComposeMesh) -> None:
    task, _ = _run(compose_mesh, f"Trace the MCP hops {FETCH_NEWS} {GIT_LOG}")
    out = compose_mesh.cli("trace", task["id"], "--json", "--wait", "30")
    assert out.returncode == 0, out.stderr
    spans = json.loads(out.stdout)["spans"]
    tools = {
        (s["service"], s["name"], s["attributes"].get("agentmesh.mcp.server"))
        for s in spans
        if s["attributes"].get("gen_ai.operation.name") == "execute_tool"
    }
    assert ("researcher", "execute_tool fetch__fetch", "fetch") in tools, tools
    assert ("coder", "execute_tool git__git_log", "git") in tools, tools
    text = compose_mesh.cli("trace", task["id"], "--wait", "30").stdout
    assert "execute_tool fetch__fetch" in text and "execute_tool git__git_log" in text, text


def test_a_denied_host_and_an_ip_literal_are_refused_by_the_egress_proxy(
    compose_mesh: ComposeMesh,
) -> None:
    task, by_role = _run(
        compose_mesh,
        'Read [[mcp fetch__fetch {"url": "http://denied.example.test/secret"}]]',
    )
    research = by_role["researcher"]
    assert "fetch__fetch returned an error" in research, research
    assert "received status 403" in research, research
    assert "served to denied.example.test" not in task["result"]
    logs = compose_mesh.compose("logs", "--no-color", "egress", check=False).stdout
    assert "user=mcp-fetch method=GET url=http://denied.example.test/robots.txt status=403" in logs
    # An IP literal (cloud metadata): the sidecar does not check addresses itself
    # (--allow-private-ips); the proxy, its only way out, refuses it.
    _, by_role = _run(
        compose_mesh,
        'Read [[mcp fetch__fetch {"url": "http://169.254.169.254/latest/meta-data/"}]]',
    )
    research = by_role["researcher"]
    assert "fetch__fetch returned an error" in research and "403" in research, research
    logs = compose_mesh.compose("logs", "--no-color", "egress", check=False).stdout
    # Refused before the proxy asks who is calling (an IP literal is denied for everyone).
    assert "method=GET url=http://169.254.169.254/robots.txt status=403/TCP_DENIED" in logs


def test_a_killed_sidecar_gives_a_clear_error_and_works_again_after_its_restart(
    compose_mesh: ComposeMesh,
) -> None:
    _, by_role = _run(compose_mesh, f"Before the fault {FETCH_NEWS}")
    assert "page /news served to allowed.example.test" in by_role["researcher"]
    compose_mesh.compose("kill", "mcp-fetch")
    try:
        _, by_role = _run(compose_mesh, f"During the fault {FETCH_NEWS}")
        research = by_role["researcher"]
        assert "fetch__fetch failed: MCP server 'fetch'" in research, research
        # The worker says which server it cannot reach.
        assert any(
            m.get("fetch", "").startswith("not connected")
            for m in _workers_mcp(compose_mesh, "researcher")
        )
    finally:
        compose_mesh.compose("start", "mcp-fetch")
        compose_mesh.wait_healthy()
    _, by_role = _run(compose_mesh, f"After the restart {FETCH_NEWS}")
    assert "page /news served to allowed.example.test" in by_role["researcher"], by_role
    deadline = time.time() + 30
    while time.time() < deadline:
        if all(m.get("fetch") == "connected" for m in _workers_mcp(compose_mesh, "researcher")):
            break
        time.sleep(2)
    else:
        raise AssertionError(_workers_mcp(compose_mesh, "researcher"))
