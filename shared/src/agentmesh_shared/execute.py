"""One subtask on a worker, from its broker message to its published result.

Payload validation first (a malformed or unknown message goes to the dead-letter list
and the worker keeps serving), then the agent loop with the task's shared budget,
then publication through the hand-off: first result wins, so a redelivered subtask
is absorbed, and the task's planner is woken once the step it waits for has all its
results (see :mod:`agentmesh_shared.handoff`).
"""

from __future__ import annotations

import logging
import time
from typing import Any

import anthropic
from opentelemetry import trace
from opentelemetry.trace import StatusCode
from pydantic import ValidationError

from agentmesh_shared import deadletter, events, metrics
from agentmesh_shared.agent import (
    AgentLoop,
    CancelledError,
    LoopLimitError,
    LoopState,
    StepRecord,
    TaskLedger,
)
from agentmesh_shared.handoff import Start
from agentmesh_shared.llm import LLMNotConfiguredError
from agentmesh_shared.models import SubtaskMessage, SubtaskResult, Usage
from agentmesh_shared.runtime import ActiveSubtask, RoleAgent, RoleSession, WorkerRuntime
from agentmesh_shared.turns import TURNS

log = logging.getLogger("agentmesh.worker")


def execute_subtask(
    runtime: WorkerRuntime, agent: RoleAgent, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> None:
    """Run one broker message to a published result; never raises."""
    msg = _validated(runtime, args, kwargs)
    if msg is None:
        return
    started = time.time()
    begun = runtime.handoff.start(
        msg.task_id,
        msg.subtask_id,
        runtime.hostname,
        runtime.lease_ttl_s,
        events.encode(
            msg.task_id,
            "subtask.started",
            f"{msg.role.value} {runtime.hostname} started subtask {msg.subtask_id}",
            subtask_id=msg.subtask_id,
            worker=runtime.hostname,
        ),
    )
    if begun is Start.DONE:
        log.warning("subtask %s already has a result; redelivery absorbed", msg.subtask_id)
        runtime.handoff.wake(msg.task_id)
        return
    span = trace.get_current_span()
    span.set_attribute("agentmesh.task_id", msg.task_id)
    span.set_attribute("agentmesh.subtask_id", msg.subtask_id)
    log.info(
        "subtask %s started",
        msg.subtask_id,
        extra={"task_id": msg.task_id, "subtask_id": msg.subtask_id, "role": msg.role.value},
    )
    runtime.enter(msg)
    try:
        # The loop's CPU work in one of the process's turns; it gives the turn up
        # while it waits on the model and on its tools (agentmesh_shared.turns).
        with TURNS.turn():
            result = _run(runtime, agent, msg, started)
            publish(runtime, result)
    finally:
        runtime.leave(msg)
    attrs = {"agentmesh.role": msg.role.value, "status": result.status}
    metrics.subtasks().add(1, attrs)
    metrics.subtask_duration().record(result.finished_at - result.started_at, attrs)
    if result.status == "failed":
        span.set_status(StatusCode.ERROR, result.error or "failed")
    log.info(
        "subtask %s %s",
        msg.subtask_id,
        result.status,
        extra={
            "task_id": msg.task_id,
            "subtask_id": msg.subtask_id,
            "role": msg.role.value,
            "steps": result.steps,
            "input_tokens": result.usage.input_tokens,
            "output_tokens": result.usage.output_tokens,
            "error": result.error,
            "duration_s": round(result.finished_at - result.started_at, 3),
        },
    )


def fail_stalled(runtime: WorkerRuntime, entry: ActiveSubtask, reason: str) -> None:
    """The stall watchdog's verdict on one loop: its subtask fails now."""
    log.error("subtask %s %s", entry.msg.subtask_id, reason)
    publish(runtime, failed_result(runtime, entry.msg, entry.started, reason))


def _validated(
    runtime: WorkerRuntime, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> SubtaskMessage | None:
    if len(args) != 1 or kwargs:
        deadletter.put(
            runtime.redis,
            "a subtask message takes exactly one positional payload",
            {"args": list(args), "kwargs": kwargs},
            role=runtime.role.value,
            worker=runtime.hostname,
        )
        return None
    try:
        msg = SubtaskMessage.model_validate(args[0])
    except ValidationError as err:
        deadletter.put(
            runtime.redis,
            f"invalid subtask payload: {_summarize(err)}",
            args[0],
            role=runtime.role.value,
            worker=runtime.hostname,
        )
        return None
    if msg.role is not runtime.role:
        deadletter.put(
            runtime.redis,
            f"a {msg.role.value} subtask reached a {runtime.role.value} worker",
            args[0],
            worker=runtime.hostname,
        )
        return None
    return msg


def _run(
    runtime: WorkerRuntime, agent: RoleAgent, msg: SubtaskMessage, started: float
) -> SubtaskResult:
    r = runtime.redis
    state = LoopState(messages=[{"role": "user", "content": msg.instruction}])

    def failed(reason: str, artifacts: dict[str, Any] | None = None) -> SubtaskResult:
        return failed_result(runtime, msg, started, reason, state=state, artifacts=artifacts)

    try:
        llm = runtime.llm
    except LLMNotConfiguredError as err:
        return failed(str(err))
    session = agent.open_session(msg, runtime)

    def step_event(record: StepRecord) -> str:
        return events.encode(
            msg.task_id,
            "subtask.step",
            f"{msg.role.value} step {record.step}: "
            + (", ".join(record.tool_calls) if record.tool_calls else "answer"),
            subtask_id=msg.subtask_id,
            worker=runtime.hostname,
            input_tokens=record.usage.input_tokens,
            output_tokens=record.usage.output_tokens,
        )

    loop = AgentLoop(
        client=llm,
        model=runtime.settings.model,
        system=agent.system_prompt,
        # The role's own tools, and those of the MCP servers granted to the role.
        tools=[*session.tools, *runtime.mcp_tools()],
        task_id=msg.task_id,
        subtask_id=msg.subtask_id,
        max_steps=msg.max_steps,
        deadline=msg.deadline,
        max_tokens=runtime.settings.llm_max_tokens,
        llm_timeout_s=runtime.settings.llm_timeout_s,
        ledger=TaskLedger(r, msg.task_id, step_event=step_event),
        agent_name=msg.role.value,
        on_progress=lambda: runtime.progress(msg.subtask_id),
    )
    try:
        outcome = loop.run(state=state)
    except (LoopLimitError, CancelledError, anthropic.APIError) as err:
        prefix = "model call failed: " if isinstance(err, anthropic.APIError) else ""
        return failed(prefix + str(err), artifacts=_collect(session))
    except Exception as err:
        log.exception("subtask %s crashed", msg.subtask_id)
        return failed(f"{type(err).__name__}: {err}", artifacts=_collect(session))
    return SubtaskResult(
        task_id=msg.task_id,
        subtask_id=msg.subtask_id,
        role=msg.role,
        status="succeeded",
        worker=runtime.hostname,
        output=outcome.text,
        usage=state.usage,
        steps=state.steps,
        artifacts=_collect(session),
        started_at=started,
        finished_at=time.time(),
    )


def _collect(session: RoleSession) -> dict[str, Any]:
    """The session's artifacts, then its scratch space is released."""
    try:
        return session.artifacts()
    finally:
        session.close()


def failed_result(
    runtime: WorkerRuntime,
    msg: SubtaskMessage,
    started: float,
    reason: str,
    *,
    state: LoopState | None = None,
    artifacts: dict[str, Any] | None = None,
) -> SubtaskResult:
    """A failed subtask's result, with what its loop had spent so far."""
    return SubtaskResult(
        task_id=msg.task_id,
        subtask_id=msg.subtask_id,
        role=msg.role,
        status="failed",
        worker=runtime.hostname,
        error=reason,
        usage=state.usage if state else Usage(),
        steps=state.steps if state else 0,
        artifacts=artifacts or {},
        started_at=started,
        finished_at=time.time(),
    )


def publish(runtime: WorkerRuntime, result: SubtaskResult) -> None:
    """First result wins: a subtask that ran twice is reported once."""
    event = events.encode(
        result.task_id,
        f"subtask.{result.status}",
        f"{result.role.value} {runtime.hostname} {result.status} subtask {result.subtask_id}"
        + (f": {result.error}" if result.error else ""),
        subtask_id=result.subtask_id,
        worker=runtime.hostname,
    )
    if not runtime.handoff.publish(result, event):
        log.warning("subtask %s already had a result; duplicate absorbed", result.subtask_id)


def _summarize(err: ValidationError) -> str:
    return "; ".join(
        f"{'.'.join(str(p) for p in e['loc']) or 'payload'}: {e['msg']}" for e in err.errors()[:5]
    )
