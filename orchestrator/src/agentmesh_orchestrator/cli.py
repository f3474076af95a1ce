"""The ``orchestrator`` command: submit tasks and inspect the mesh.

Exit codes: 0 success (a waited-for task succeeded), 1 the task failed or was
cancelled, 2 invalid input, 3 the API is unreachable, 4 unknown id, 5 the mesh is
not ready (e.g. no model configured), 6 the API is up but too slow or too busy
(timeouts, 429) to answer in time, 7 the API refused the
token (or none was found).
"""

from __future__ import annotations

import json
import os
import sys
import time
from typing import Any

import click
from agentmesh_shared import telemetry
from opentelemetry.trace import SpanKind

from agentmesh_orchestrator.client import ApiClient, ApiError, ApiSlowError, resolve_token

DEFAULT_API = "http://127.0.0.1:8080"
TERMINAL = {"succeeded", "failed", "cancelled"}


def _client(ctx: click.Context) -> ApiClient:
    return ApiClient(
        ctx.obj["api"],
        timeout=ctx.obj.get("request_timeout", 40.0),
        token=resolve_token(ctx.obj["token_file"]),
    )


def _emit(data: Any, as_json: bool, human: str) -> None:
    click.echo(json.dumps(data, indent=2) if as_json else human)


def _fail(err: ApiError) -> None:
    click.echo(f"error: {err}", err=True)
    sys.exit(err.exit_code)


def _describe_task(task: dict[str, Any]) -> str:
    lines = [
        f"task      {task['id']}",
        f"status    {task['status']}",
        f"trace     {task.get('trace_id') or '-'}",
        f"usage     {task['usage']['input_tokens']} in / {task['usage']['output_tokens']} out tokens",
    ]
    for sub in task.get("subtasks", []):
        lines.append(
            f"  {sub['role']:<10} {sub['status']:<9} {sub.get('worker') or '-':<20} {sub['id']}"
        )
    if task.get("error"):
        lines.append(f"error     {task['error']}")
    if task.get("result"):
        lines.append("")
        lines.append(task["result"])
    return "\n".join(lines)


class _Cli(click.Group):
    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except ApiError as err:
            _fail(err)


@click.group(cls=_Cli, context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--api",
    default=lambda: os.environ.get("AGENTMESH_API_URL", DEFAULT_API),
    show_default=DEFAULT_API,
    help="orchestrator API URL (env AGENTMESH_API_URL)",
)
@click.option(
    "--request-timeout",
    type=click.FloatRange(min=0, min_open=True),
    default=40.0,
    show_default=True,
    envvar="AGENTMESH_REQUEST_TIMEOUT_S",
    help="seconds to wait for one API answer before calling the API slow (exit 6)",
)
@click.option(
    "--token-file",
    type=click.Path(dir_okay=False),
    help="file holding the API token (default: AGENTMESH_API_TOKEN, then "
    "/run/secrets/api_token, then ./secrets/api_token)",
)
@click.pass_context
def main(ctx: click.Context, api: str, request_timeout: float, token_file: str | None) -> None:
    """Submit tasks to the agentmesh orchestrator and inspect the mesh."""
    ctx.ensure_object(dict)
    ctx.obj["api"] = api
    ctx.obj["request_timeout"] = request_timeout
    ctx.obj["token_file"] = token_file
    if telemetry.export_enabled() and ctx.invoked_subcommand not in {"serve", "plan"}:
        # The CLI is the first hop of a task's trace: its span is the API call's parent.
        telemetry.setup_telemetry("orchestrator-cli")
        ctx.call_on_close(telemetry.shutdown_telemetry)
        ctx.with_resource(
            telemetry.tracer("agentmesh.cli").start_as_current_span(
                f"cli {ctx.invoked_subcommand}", kind=SpanKind.CLIENT
            )
        )


@main.command()
@click.argument("text")
@click.option("--wait", is_flag=True, help="wait until the task ends, showing progress")
@click.option("--follow", is_flag=True, help="stream every progress event until the task ends")
@click.option("--json", "as_json", is_flag=True, help="machine-readable output")
@click.option(
    "--token-budget", type=click.IntRange(min=1), help="tokens all subtasks may spend together"
)
@click.option("--max-steps", type=click.IntRange(min=1), help="agent steps per loop")
@click.option(
    "--timeout", type=click.FloatRange(min=0, min_open=True), help="wall-clock limit, seconds"
)
@click.option("--idempotency-key", help="submitting the same key again returns the same task")
@click.pass_context
def submit(
    ctx: click.Context,
    text: str,
    wait: bool,
    follow: bool,
    as_json: bool,
    token_budget: int | None,
    max_steps: int | None,
    timeout: float | None,
    idempotency_key: str | None,
) -> None:
    """Submit TEXT as a task ('-' reads it from standard input)."""
    if text == "-":
        text = sys.stdin.read()
    if not text.strip():
        click.echo("error: the task text is empty", err=True)
        sys.exit(2)
    body: dict[str, Any] = {"text": text}
    for key, value in (
        ("token_budget", token_budget),
        ("max_steps", max_steps),
        ("timeout_s", timeout),
    ):
        if value is not None:
            body[key] = value
    client = _client(ctx)
    task = client.submit(body, idempotency_key)
    if not (wait or follow):
        _emit(task, as_json, f"{task['id']}\t{task['status']}\ttrace {task.get('trace_id')}")
        return
    if not as_json:
        click.echo(f"submitted {task['id']} (trace {task.get('trace_id')})", err=True)
    task = _wait(client, task["id"], follow=follow)
    _emit(task, as_json, _describe_task(task))
    sys.exit(0 if task["status"] == "succeeded" else 1)


def _wait(client: ApiClient, task_id: str, *, follow: bool) -> dict[str, Any]:
    """Long-poll the task's events until it ends; progress goes to stderr.

    A slow or busy answer (timeout, 429) does not end the wait: the task is still
    running in the mesh, so the poll is sent again; only an unreachable API, an
    unknown id or a task that ended stops it.
    """
    after = "0"
    started = time.monotonic()
    while True:
        try:
            for event in client.events(task_id, after=after, wait=5):
                after = event["id"]
                if follow or event["kind"].startswith(
                    ("task.", "subtask.started", "subtask.succeeded", "subtask.failed")
                ):
                    click.echo(f"[{time.monotonic() - started:6.1f}s] {event['message']}", err=True)
            task = client.get(task_id)
        except ApiSlowError as err:
            click.echo(f"[{time.monotonic() - started:6.1f}s] still waiting: {err}", err=True)
            continue
        if task["status"] in TERMINAL:
            return task


@main.command()
@click.option("--limit", type=click.IntRange(1, 1000), default=20, show_default=True)
@click.option("--drain", is_flag=True, help="remove the oldest LIMIT entries as they are shown")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def deadletter(ctx: click.Context, limit: int, drain: bool, as_json: bool) -> None:
    """Show broker messages no worker could accept (newest first), or drain them (oldest first)."""
    client = _client(ctx)
    if drain:
        entries = client.request("POST", "/deadletter/drain", params={"limit": limit})
    else:
        entries = client.request("GET", "/deadletter", params={"limit": limit})
    lines = [
        f"{time.strftime('%Y-%m-%d %H:%M:%S', time.gmtime(e.get('at', 0)))}Z  "
        f"{e.get('queue') or e.get('role') or '-':<9} {e.get('reason')}"
        for e in entries
    ]
    verb = "drained" if drain else "shown"
    _emit(entries, as_json, "\n".join([*lines, f"({len(entries)} {verb})"]))


@main.command()
@click.argument("task_id")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def status(ctx: click.Context, task_id: str, as_json: bool) -> None:
    """Show a task's state."""
    task = _client(ctx).get(task_id)
    _emit(task, as_json, _describe_task(task))


@main.command()
@click.argument("task_id")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def result(ctx: click.Context, task_id: str, as_json: bool) -> None:
    """Print a finished task's result (exit 1 if it failed, 4 if unknown)."""
    task = _client(ctx).get(task_id)
    if as_json:
        _emit({k: task[k] for k in ("id", "status", "result", "error")}, True, "")
    elif task["status"] == "succeeded":
        click.echo(task["result"])
    elif task["status"] in TERMINAL:
        click.echo(f"task {task_id} {task['status']}: {task.get('error')}", err=True)
    else:
        click.echo(f"task {task_id} is still {task['status']}", err=True)
    sys.exit(0 if task["status"] == "succeeded" else 1)


@main.command(name="list")
@click.option(
    "--status",
    "status_",
    type=click.Choice(["queued", "running", "succeeded", "failed", "cancelled"]),
)
@click.option("--limit", type=click.IntRange(1, 500), default=20, show_default=True)
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def list_tasks(ctx: click.Context, status_: str | None, limit: int, as_json: bool) -> None:
    """List recent tasks, newest first."""
    params: dict[str, Any] = {"limit": limit}
    if status_:
        params["status"] = status_
    tasks = _client(ctx).request("GET", "/tasks", params=params)
    human = (
        "\n".join(
            f"{t['id']}  {t['status']:<9}  {time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(t['created_at']))}  "
            f"{t['text'][:60]!r}"
            for t in tasks
        )
        or "no tasks"
    )
    _emit(tasks, as_json, human)


@main.command()
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def workers(ctx: click.Context, as_json: bool) -> None:
    """List every live worker replica of each role."""
    found = _client(ctx).request("GET", "/workers")
    human = (
        "\n".join(
            f"{w['role']:<10} {w['hostname']:<24} in-flight {w['in_flight']:>3}/{w['concurrency']:<4} "
            f"processed {w['processed']}"
            + "".join(f"  mcp {name}: {state}" for name, state in w.get("mcp", {}).items())
            for w in found
        )
        or "no live workers"
    )
    _emit(found, as_json, human)


@main.command()
@click.argument("task_id")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def cancel(ctx: click.Context, task_id: str, as_json: bool) -> None:
    """Cancel a queued or running task."""
    task = _client(ctx).request("POST", f"/tasks/{task_id}/cancel")
    _emit(task, as_json, f"cancellation requested for {task_id}")


@main.command()
def serve() -> None:
    """Run the orchestrator service: the HTTP API and the planning loop."""
    from agentmesh_orchestrator.server import run  # noqa: PLC0415 - keeps the CLI start fast

    run()


@main.command()
def plan() -> None:
    """Run a planning replica only (no API): scale these to plan more tasks at once."""
    from agentmesh_orchestrator.server import run_planner  # noqa: PLC0415 - fast CLI start

    run_planner()


@main.command()
@click.argument("task_id")
@click.option("--json", "as_json", is_flag=True, help="machine-readable output")
@click.option(
    "--wait",
    type=click.FloatRange(0, 30),
    default=10,
    show_default=True,
    help="seconds to wait for spans of every service the task used (exporters batch)",
)
@click.pass_context
def trace(ctx: click.Context, task_id: str, as_json: bool, wait: float) -> None:
    """Show a task's trace: the span tree across every service and replica."""
    from agentmesh_orchestrator.trace_cli import show_trace  # noqa: PLC0415 - fast CLI start

    show_trace(_client(ctx), task_id, as_json=as_json, wait=wait)


if __name__ == "__main__":
    main()
