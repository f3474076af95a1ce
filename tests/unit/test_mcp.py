"""MCP tool servers: mcp.yaml, the worker's hub against a real MCP server over HTTP."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from agentmesh_shared.agent.tools import ToolContext
from agentmesh_shared.llm.scripted_server import mcp_directives, reply_for
from agentmesh_shared.mcp import McpConfigError, McpHub, mcp_tools, parse_config
from agentmesh_shared.models import Role
from agentmesh_shared.runtime import WorkerRuntime
from agentmesh_shared.settings import load_settings
from opentelemetry.sdk.trace import TracerProvider

from tests.support.chroma_server import free_port
from tests.support.mcp_server import McpServerProcess

pytestmark = pytest.mark.unit


def _ctx() -> ToolContext:
    return ToolContext(task_id="t", subtask_id="s", tool_use_id="toolu_1", step=1)


# -- mcp.yaml -----------------------------------------------------------------------
def test_a_valid_file_lists_servers_per_role() -> None:
    config = parse_config(
        "servers:\n"
        "  fetch:\n"
        "    url: http://mcp-fetch:8000/mcp\n"
        "    roles: [researcher]\n"
        "  git:\n"
        "    url: http://mcp-git:8000/mcp\n"
        "    roles: [coder, researcher]\n"
        "    tools: [git_log]\n"
    )
    assert [s.name for s in config.for_role(Role.RESEARCHER)] == ["fetch", "git"]
    assert [s.name for s in config.for_role(Role.CODER)] == ["git"]
    git = config.for_role(Role.CODER)[0]
    assert git.allows("git_log") and not git.allows("git_commit")
    assert git.tool_name("git_log") == "git__git_log"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "servers:\n  fetch:\n    url: http://a/mcp\n    roles: [researcher, planner]\n",
            "mcp.yaml:4: servers.fetch.roles: Value error, unknown role 'planner'",
        ),
        (
            "servers:\n  a:\n    url: http://a/mcp\n    roles: [coder]\n"
            "  a:\n    url: http://b/mcp\n    roles: [coder]\n",
            "mcp.yaml:5: duplicate name 'a'",
        ),
        (
            "servers:\n  a:\n    url: not a url\n    roles: [coder]\n",
            "mcp.yaml:3: servers.a.url: Input should be a valid URL",
        ),
        (
            "servers:\n  a:\n    url: http://a/mcp\n    roles: [coder]\n    colour: red\n",
            "mcp.yaml:5: servers.a.colour: Extra inputs are not permitted",
        ),
        (
            "servers:\n  x: {url: http://a/mcp, roles: [coder]}\n  my_tools:\n    url: http://a/mcp\n    roles: [coder]\n",
            "mcp.yaml:3: servers.my_tools: Value error, a server name is lower-case",
        ),
        ("servers: [a, b]\n", "mcp.yaml:1: servers must be a mapping"),
        ("servers:\n  a: {url: http://a/mcp\n", "mcp.yaml: not valid YAML"),
    ],
)
def test_errors_name_the_line(text: str, expected: str) -> None:
    with pytest.raises(McpConfigError) as err:
        parse_config(text)
    assert expected in str(err.value), str(err.value)


# -- the hub against a real server ----------------------------------------------------
@pytest.fixture
def server() -> Iterator[McpServerProcess]:
    proc = McpServerProcess(free_port())
    proc.start()
    yield proc
    proc.stop()


def _hub(url: str, extra: str = "", role: str = "researcher") -> McpHub:
    config = parse_config(f"servers:\n  tt:\n    url: {url}\n    roles: [{role}]\n{extra}")
    return McpHub(config.servers, connect_timeout_s=5, call_timeout_s=10)


def test_tools_are_prefixed_and_called(server: McpServerProcess) -> None:
    hub = _hub(server.url)
    try:
        tools = {t.name: t for t in mcp_tools(hub, max_chars=100, call_timeout_s=10)}
        assert set(tools) == {"tt__echo", "tt__big", "tt__get", "tt__fail", "tt__seen_traceparents"}
        schema = tools["tt__echo"].schema()
        assert schema["input_schema"]["properties"]["text"]["type"] == "string"
        assert tools["tt__echo"].invoke({"text": "hello"}, _ctx()).content == "hello"
        failed = tools["tt__fail"].invoke({"reason": "no luck"}, _ctx())
        assert failed.is_error and "no luck" in failed.content
        cut = tools["tt__big"].invoke({"chars": 5000}, _ctx())
        assert not cut.is_error and cut.content.startswith("x" * 100 + "\n")
        assert "[result cut: 5000 characters, only the first 100 are shown]" in cut.content
        bad = tools["tt__echo"].invoke({"wrong": 1}, _ctx())
        assert bad.is_error and "tt__echo" in bad.content
        assert hub.status() == {"tt": "connected"}
    finally:
        hub.close()


def test_the_tool_allowlist_hides_the_others(server: McpServerProcess) -> None:
    hub = _hub(server.url, "    tools: [echo]\n")
    try:
        assert [t.name for t in mcp_tools(hub, max_chars=100, call_timeout_s=10)] == ["tt__echo"]
    finally:
        hub.close()


def test_the_trace_context_goes_in_the_http_header(server: McpServerProcess) -> None:
    provider = TracerProvider()
    hub = _hub(server.url)
    try:
        tools = {t.name: t for t in mcp_tools(hub, max_chars=10_000, call_timeout_s=10)}
        with provider.get_tracer("test").start_as_current_span("execute_tool tt__echo") as span:
            tools["tt__echo"].invoke({"text": "traced"}, _ctx())
            trace_id = format(span.get_span_context().trace_id, "032x")
        seen = json.loads(tools["tt__seen_traceparents"].invoke({}, _ctx()).content)
        assert any(tp.split("-")[1] == trace_id for tp in seen), seen
    finally:
        hub.close()


def test_a_server_down_fails_clearly_and_the_next_call_after_its_restart_works(
    server: McpServerProcess,
) -> None:
    hub = _hub(server.url)
    try:
        echo = next(
            t for t in mcp_tools(hub, max_chars=100, call_timeout_s=10) if t.name == "tt__echo"
        )
        assert echo.invoke({"text": "one"}, _ctx()).content == "one"
        server.stop()
        down = echo.invoke({"text": "two"}, _ctx())
        assert down.is_error and "MCP server 'tt'" in down.content, down.content
        assert hub.status()["tt"].startswith("not connected: ")
        server.start()
        assert echo.invoke({"text": "three"}, _ctx()).content == "three"
        assert hub.status() == {"tt": "connected"}
    finally:
        hub.close()


def test_a_credential_from_a_secret_file(tmp_path: Path) -> None:
    proc = McpServerProcess(free_port(), token="s3cret-token")
    proc.start()
    try:
        refused = _hub(proc.url)
        try:
            assert refused.connect_all()["tt"] is not None
            assert refused.status()["tt"].startswith("not connected: ")
        finally:
            refused.close()
        secret = tmp_path / "mcp_token"
        secret.write_text("s3cret-token\n")
        hub = _hub(proc.url, f"    token_file: {secret}\n")
        try:
            assert hub.connect_all() == {"tt": None}
            tools = {t.name: t for t in mcp_tools(hub, max_chars=100, call_timeout_s=10)}
            assert tools["tt__echo"].invoke({"text": "in"}, _ctx()).content == "in"
        finally:
            hub.close()
    finally:
        proc.stop()


def test_a_role_not_granted_a_server_never_sees_its_tools(
    server: McpServerProcess, tmp_path: Path
) -> None:
    config = tmp_path / "mcp.yaml"
    config.write_text(f"servers:\n  tt:\n    url: {server.url}\n    roles: [researcher]\n")
    settings = load_settings(mcp_config=config)
    researcher = WorkerRuntime(settings=settings, role=Role.RESEARCHER)
    coder = WorkerRuntime(settings=settings, role=Role.CODER)
    try:
        assert "tt__echo" in {t.name for t in researcher.mcp_tools()}
        assert coder.mcp_tools() == []
        assert coder.mcp.status() == {}
    finally:
        researcher.mcp.close()
        coder.mcp.close()


# -- the scripted model calls MCP tools from the task text ------------------------------
def test_the_scripted_model_calls_offered_mcp_tools_and_names_the_others() -> None:
    task = 'Look [[mcp tt__echo {"text": "hi"}]] and [[mcp git__git_log {"repo_path": "/r"}]]'
    assert mcp_directives(task) == [
        ("tt__echo", {"text": "hi"}),
        ("git__git_log", {"repo_path": "/r"}),
    ]
    tools = [{"name": n} for n in ("memory_store", "memory_search", "fetch_url", "tt__echo")]
    first = {"tools": tools, "messages": [{"role": "user", "content": task}]}
    content, stop = reply_for(first)
    assert stop == "tool_use" and content[0]["name"] == "tt__echo"
    assert content[0]["input"] == {"text": "hi"}
    done = {
        "tools": tools,
        "messages": [
            {"role": "user", "content": task},
            {"role": "assistant", "content": content},
            {
                "role": "user",
                "content": [{"type": "tool_result", "tool_use_id": "x", "content": "hi"}],
            },
        ],
    }
    content, stop = reply_for(done)
    assert stop == "end_turn"
    assert "- tt__echo: hi" in content[0]["text"]
    assert "not offered to this role: git__git_log" in content[0]["text"]
    planner, _ = reply_for(
        {"tools": [{"name": "delegate"}], "messages": [{"role": "user", "content": task}]}
    )
    for delegation in (b for b in planner if b["type"] == "tool_use"):
        assert '[[mcp tt__echo {"text": "hi"}]]' in delegation["input"]["instruction"]


def test_readiness_names_the_server_a_worker_cannot_reach() -> None:
    from agentmesh_orchestrator.api import mcp_checks
    from agentmesh_shared.models import WorkerInfo

    def worker(host: str, role: Role, mcp: dict[str, str]) -> WorkerInfo:
        return WorkerInfo(
            hostname=host,
            role=role,
            pid=1,
            concurrency=1,
            in_flight=0,
            processed=0,
            started_at=0,
            last_seen=0,
            mcp=mcp,
        )

    checks = mcp_checks(
        [
            worker("r1", Role.RESEARCHER, {"fetch": "connected", "time": "connected"}),
            worker("r2", Role.RESEARCHER, {"fetch": "not connected: ConnectError: refused"}),
            worker("c1", Role.CODER, {"time": "connected"}),
        ]
    )
    assert checks == {
        "mcp:fetch": "not connected on researcher@r2 (not connected: ConnectError: refused)",
        "mcp:time": "connected",
    }


def test_a_call_never_passes_the_task_wall_clock(server: McpServerProcess) -> None:
    import time

    hub = _hub(server.url)
    try:
        echo = next(
            t for t in mcp_tools(hub, max_chars=100, call_timeout_s=10) if t.name == "tt__echo"
        )
        late = ToolContext(
            task_id="t", subtask_id="s", tool_use_id="x", step=3, deadline=time.time() - 1
        )
        outcome = echo.invoke({"text": "too late"}, late)
        assert outcome.is_error and "wall-clock limit passed" in outcome.content
    finally:
        hub.close()


def test_the_worker_health_check_names_a_server_not_connected(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from agentmesh_shared import health

    beat_file = tmp_path / "heartbeat"
    health.beat(beat_file, ["mcp server fetch: not connected: ConnectError: refused"])
    assert health.main([str(beat_file)]) == 0
    out = capsys.readouterr().out
    assert out.startswith("healthy: ")
    assert "mcp server fetch: not connected: ConnectError: refused" in out
