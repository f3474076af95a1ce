"""The planning loop: Claude plans a task, delegating subtasks to the worker queues.

Each ``delegate`` tool call becomes a Celery message on the ``research`` or ``code``
queue; the calls of one turn run in parallel (the agent loop runs a turn's tool calls
concurrently) and their results come back as tool results. The loop's state is
checkpointed to Redis after every step, so a restarted orchestrator resumes each
unfinished task from its last checkpoint: delegations already sent are awaited, not
sent again.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, cast

import anthropic
import redis
from agentmesh_shared import events, keys, metrics, telemetry
from agentmesh_shared.agent import (
    AgentLoop,
    CancelledError,
    LoopLimitError,
    LoopState,
    StepRecord,
    Tool,
    ToolContext,
    ToolError,
)
from agentmesh_shared.budget import TokenBudget
from agentmesh_shared.llm import LLMNotConfiguredError
from agentmesh_shared.models import (
    TASK_NAME_BY_ROLE,
    Role,
    SubtaskMessage,
    SubtaskRecord,
    SubtaskResult,
    TaskRecord,
    TaskStatus,
    Usage,
)
from agentmesh_shared.settings import Settings
from celery import Celery
from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import SpanKind, StatusCode
from pydantic import BaseModel, Field

from agentmesh_orchestrator.store import TaskStore

log = logging.getLogger("agentmesh.planner")
_tracer = telemetry.tracer("agentmesh.orchestrator")

SYSTEM_PROMPT = """You are the orchestrator of a multi-agent mesh.
Plan the user's task and delegate the work: the researcher investigates and stores
findings in shared memory; the coder writes and runs Python (it can read what the
researcher stored). Delegate independent subtasks in the same turn so they run in
parallel. When the results are in, answer with a synthesis for the user."""

RESULT_GRACE_S = 15.0
MAX_RESENDS = 3
REDIS_RETRY_S = 2.0


class DelegateInput(BaseModel):
    role: Role = Field(description="who does the work: researcher or coder")
    instruction: str = Field(
        min_length=1, max_length=20_000, description="the subtask, self-contained"
    )


def subtask_id_for(task_id: str, tool_use_id: str) -> str:
    """Deterministic, so a resumed loop finds the subtask it already sent."""
    return f"{task_id}-{hashlib.sha256(tool_use_id.encode()).hexdigest()[:12]}"


@dataclass
class Planner:
    settings: Settings
    redis: redis.Redis
    store: TaskStore
    celery: Celery
    llm_factory: Any  # Callable[[], anthropic.Anthropic]; raises LLMNotConfiguredError
    _executor: ThreadPoolExecutor = field(init=False)
    _driving: set[str] = field(default_factory=set)
    _guard: threading.Lock = field(default_factory=threading.Lock)
    _llm: anthropic.Anthropic | None = None

    def __post_init__(self) -> None:
        self._executor = ThreadPoolExecutor(
            max_workers=self.settings.planner_concurrency, thread_name_prefix="planner"
        )
        self.budget = TokenBudget(self.redis)

    # -- lifecycle ----------------------------------------------------------------------
    def resume_all(self) -> list[str]:
        """Pick up every task a previous orchestrator process accepted but did not end."""
        resumed = self.store.active_ids()
        for task_id in resumed:
            events.publish(self.redis, task_id, "task.resumed", "orchestrator resumed the task")
            self.submit(task_id)
        return resumed

    def submit(self, task_id: str) -> None:
        with self._guard:
            if task_id in self._driving:
                return
            self._driving.add(task_id)
        self._executor.submit(self._drive_guarded, task_id)

    def shutdown(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)

    def llm(self) -> anthropic.Anthropic:
        if self._llm is None:
            self._llm = cast("anthropic.Anthropic", self.llm_factory())
        return self._llm

    # -- one task -------------------------------------------------------------------------
    def _drive_guarded(self, task_id: str) -> None:
        """Drive a task to its end.

        When Redis stays unreachable past the client's own retries, planning resumes
        from the last checkpoint once Redis is back, for up to the task timeout; after
        that the task stays recorded as unfinished and the next orchestrator start
        resumes it.
        """
        give_up_at = time.time() + self.settings.task_timeout_s
        try:
            while True:
                try:
                    self._drive(task_id)
                    return
                except redis.ConnectionError:
                    if time.time() > give_up_at:
                        log.exception(
                            "Redis unreachable; leaving task %s for the next start", task_id
                        )
                        return
                    log.warning(
                        "lost Redis while planning %s; resuming from its checkpoint", task_id
                    )
                    time.sleep(REDIS_RETRY_S)
        except Exception:
            log.exception("planning task %s crashed", task_id)
            try:
                self._finish(
                    task_id, TaskStatus.FAILED, error="internal error while planning (see logs)"
                )
            except redis.RedisError:
                log.exception("could not record the failure of task %s", task_id)
        finally:
            with self._guard:
                self._driving.discard(task_id)

    def _drive(self, task_id: str) -> None:
        record = self.store.get(task_id)
        if record is None or record.status.terminal:
            return
        parent = telemetry.extract(
            {"traceparent": record.traceparent} if record.traceparent else None
        )
        token = otel_context.attach(parent)
        try:
            with _tracer.start_as_current_span(
                "task.plan", attributes={"agentmesh.task_id": task_id}
            ):
                self._plan(record)
        finally:
            otel_context.detach(token)

    def _plan(self, record: TaskRecord) -> None:
        task_id = record.id
        limits = record.limits
        deadline = record.created_at + limits.timeout_s
        self.budget.open(task_id, limits.token_budget, ttl_s=int(limits.timeout_s) + 7 * 86_400)
        if record.status is TaskStatus.QUEUED:
            self.store.update(task_id, lambda r: setattr(r, "status", TaskStatus.RUNNING))
            events.publish(self.redis, task_id, "task.running", "planning started")
        checkpoint = self.store.load_checkpoint(task_id)
        state = LoopState.from_dict(json.loads(checkpoint)) if checkpoint else None
        log.info(
            "planning task %s",
            task_id,
            extra={"task_id": task_id, "resumed_at_step": state.steps if state else None},
        )
        try:
            loop = AgentLoop(
                client=self.llm(),
                model=self.settings.model,
                system=SYSTEM_PROMPT,
                tools=[self._delegate_tool(record, deadline)],
                task_id=task_id,
                max_steps=limits.max_steps,
                deadline=deadline,
                max_tokens=self.settings.llm_max_tokens,
                llm_timeout_s=self.settings.llm_timeout_s,
                budget=self.budget,
                is_cancelled=lambda: bool(self.redis.exists(keys.cancel_flag(task_id))),
                on_checkpoint=lambda s: self._checkpoint(task_id, s),
                on_step=lambda step: self._on_step(task_id, step),
                agent_name="orchestrator",
            )
            outcome = loop.run(prompt=record.text, state=state)
        except (LLMNotConfiguredError, LoopLimitError) as err:
            self._finish(task_id, TaskStatus.FAILED, error=str(err))
        except CancelledError:
            self._finish(task_id, TaskStatus.CANCELLED, error="cancelled by request")
        except anthropic.APIError as err:
            self._finish(task_id, TaskStatus.FAILED, error=f"model call failed: {err}")
        else:
            subtasks = self._subtasks(task_id)
            failed = [s for s in subtasks if s.status is TaskStatus.FAILED]
            if subtasks and len(failed) == len(subtasks):
                # Nothing the answer rests on was done: the task failed, with the reasons.
                reasons = "; ".join(f"{s.role.value}: {s.error}" for s in failed)
                self._finish(
                    task_id,
                    TaskStatus.FAILED,
                    result=outcome.text,
                    error=f"every subtask failed: {reasons}",
                )
                return
            note = f" ({len(failed)} subtask(s) failed)" if failed else ""
            self._finish(task_id, TaskStatus.SUCCEEDED, result=outcome.text, note=note)

    def _subtasks(self, task_id: str) -> list[SubtaskRecord]:
        record = self.store.get(task_id)
        return record.subtasks if record else []

    def _checkpoint(self, task_id: str, state: LoopState) -> None:
        self.store.save_checkpoint(task_id, json.dumps(state.to_dict()))

        def apply(r: TaskRecord) -> None:
            r.steps = state.steps
            r.usage = state.usage + sum((s.usage for s in r.subtasks), Usage())

        self.store.update(task_id, apply)

    def _on_step(self, task_id: str, step: StepRecord) -> None:
        calls = ", ".join(step.tool_calls) or "final answer"
        events.publish(
            self.redis,
            task_id,
            "task.step",
            f"planner step {step.step}: {calls}",
            input_tokens=step.usage.input_tokens,
            output_tokens=step.usage.output_tokens,
        )

    def _finish(
        self,
        task_id: str,
        status: TaskStatus,
        *,
        result: str | None = None,
        error: str | None = None,
        note: str = "",
    ) -> None:
        def apply(r: TaskRecord) -> None:
            if r.status.terminal:
                return
            r.status = status
            r.result = result
            r.error = error
            r.finished_at = time.time()
            checkpoint = self.store.load_checkpoint(task_id)
            planner_usage = (
                LoopState.from_dict(json.loads(checkpoint)).usage if checkpoint else Usage()
            )
            r.usage = planner_usage + sum((s.usage for s in r.subtasks), Usage())

        try:
            self.store.update(task_id, apply)
        except KeyError:
            return
        metrics.tasks().add(1, {"status": status.value})
        log.info("task %s %s", task_id, status.value, extra={"task_id": task_id, "error": error})
        if status is not TaskStatus.SUCCEEDED:
            trace.get_current_span().set_status(StatusCode.ERROR, error or status.value)
        events.publish(
            self.redis,
            task_id,
            f"task.{status.value}",
            f"task {status.value}{note}" + (f": {error}" if error else ""),
        )

    # -- delegation -------------------------------------------------------------------------
    def _delegate_tool(self, record: TaskRecord, task_deadline: float) -> Tool[DelegateInput]:
        def delegate(args: DelegateInput, ctx: ToolContext) -> str:
            return self._delegate(args, ctx, task_deadline)

        return Tool(
            name="delegate",
            description=(
                "Send a subtask to a worker: role 'researcher' investigates and stores findings "
                "in shared memory; role 'coder' writes and runs Python. Returns the worker's result."
            ),
            input_model=DelegateInput,
            fn=delegate,
        )

    def _delegate(self, args: DelegateInput, ctx: ToolContext, task_deadline: float) -> str:
        task_id = ctx.task_id
        subtask_id = subtask_id_for(task_id, ctx.tool_use_id)
        record = self.store.get(task_id)
        max_steps = record.limits.max_steps if record else self.settings.max_steps
        deadline = min(task_deadline, time.time() + self.settings.subtask_timeout_s)
        with _tracer.start_as_current_span(
            "delegate",
            attributes={"agentmesh.subtask_id": subtask_id, "agentmesh.role": args.role.value},
        ):
            sub = self._ensure_subtask(task_id, subtask_id, args)
            if sub.dispatched_at is not None:
                deadline = max(deadline, sub.dispatched_at + self.settings.subtask_timeout_s)
            message = SubtaskMessage(
                task_id=task_id,
                subtask_id=subtask_id,
                role=args.role,
                instruction=args.instruction,
                max_steps=max_steps,
                deadline=deadline,
            )
            if sub.dispatched_at is None:
                self._send(message)
                events.publish(
                    self.redis,
                    task_id,
                    "subtask.queued",
                    f"delegated {args.role.value} subtask {subtask_id}",
                    subtask_id=subtask_id,
                )
            result = self._await_result(message, deadline + RESULT_GRACE_S)
        return self._accept(task_id, result)

    def _send(self, message: SubtaskMessage) -> None:
        with _tracer.start_as_current_span(
            f"send {message.role.queue}",
            kind=SpanKind.PRODUCER,
            attributes=telemetry.messaging_attributes(
                "send", message.role.queue, message.subtask_id
            ),
        ):
            self.celery.send_task(
                TASK_NAME_BY_ROLE[message.role],
                args=[message.model_dump(mode="json")],
                task_id=message.subtask_id,
                queue=message.role.queue,
                headers=telemetry.inject(),
            )
        self._set_subtask(message.task_id, message.subtask_id, dispatched_at=time.time())

    def _ensure_subtask(self, task_id: str, subtask_id: str, args: DelegateInput) -> SubtaskRecord:
        found: list[SubtaskRecord] = []

        def apply(r: TaskRecord) -> None:
            for s in r.subtasks:
                if s.id == subtask_id:
                    found.append(s)
                    return
            sub = SubtaskRecord(id=subtask_id, role=args.role, instruction=args.instruction)
            r.subtasks.append(sub)
            found.append(sub)

        self.store.update(task_id, apply)
        return found[0]

    def _set_subtask(self, task_id: str, subtask_id: str, **changes: Any) -> None:
        def apply(r: TaskRecord) -> None:
            for s in r.subtasks:
                if s.id == subtask_id:
                    for name, value in changes.items():
                        setattr(s, name, value)

        self.store.update(task_id, apply)

    def _await_result(self, message: SubtaskMessage, give_up_at: float) -> SubtaskResult:
        """Wait for the subtask's result, resending it if its worker dies.

        A worker renews a lease on each subtask it runs; a lease that lapses without a
        result means the worker died (SIGKILL, OOM, a lost host), so the subtask is
        sent again at once instead of waiting for the broker's visibility timeout.
        A late result of the first run is absorbed: the first result wins.
        """
        task_id, subtask_id = message.task_id, message.subtask_id
        result_key = keys.subtask_result(subtask_id)
        done_key = keys.subtask_done(subtask_id)
        seen_start: dict[str, Any] | None = None
        resends = 0
        while True:
            raw = cast("str | None", self.redis.get(result_key))
            if raw is not None:
                return SubtaskResult.model_validate_json(raw)
            started = cast("str | None", self.redis.get(keys.subtask_started(subtask_id)))
            if started is not None and seen_start is None:
                seen_start = json.loads(started)
                self._set_subtask(
                    task_id,
                    subtask_id,
                    status=TaskStatus.RUNNING,
                    worker=seen_start["worker"],
                    started_at=seen_start["at"],
                )
            elif seen_start is not None and not self.redis.exists(keys.subtask_lease(subtask_id)):
                if self.redis.exists(result_key):
                    continue
                resends += 1
                if resends > MAX_RESENDS:
                    error = f"lost its worker {resends} times (last: {seen_start['worker']})"
                    self._set_subtask(task_id, subtask_id, status=TaskStatus.FAILED, error=error)
                    raise ToolError(error)
                log.warning(
                    "subtask %s lost its worker %s; sending it again",
                    subtask_id,
                    seen_start["worker"],
                )
                events.publish(
                    self.redis,
                    task_id,
                    "subtask.resent",
                    f"worker {seen_start['worker']} stopped renewing subtask {subtask_id}; sent again",
                    subtask_id=subtask_id,
                    worker=seen_start["worker"],
                )
                self.redis.delete(keys.subtask_started(subtask_id))
                seen_start = None
                self._set_subtask(task_id, subtask_id, status=TaskStatus.QUEUED, worker=None)
                self._send(message)
            if self.redis.exists(keys.cancel_flag(task_id)):
                raise ToolError("the task was cancelled")
            remaining = give_up_at - time.time()
            if remaining <= 0:
                error = f"no result within the subtask's time limit ({self.settings.subtask_timeout_s:.0f}s)"
                self._set_subtask(
                    task_id,
                    subtask_id,
                    status=TaskStatus.FAILED,
                    error=error,
                    finished_at=time.time(),
                )
                raise ToolError(error)
            self.redis.blpop([done_key], timeout=max(1, min(2, int(remaining))))

    def _accept(self, task_id: str, result: SubtaskResult) -> str:
        """Record a subtask's result once, and turn it into the tool result the planner sees."""

        def apply(r: TaskRecord) -> None:
            for s in r.subtasks:
                if s.id == result.subtask_id and not s.status.terminal:
                    s.status = TaskStatus(result.status)
                    s.worker = result.worker
                    s.result = result.output or None
                    s.error = result.error
                    s.usage = result.usage
                    s.steps = result.steps
                    s.artifacts = result.artifacts
                    s.started_at = result.started_at
                    s.finished_at = result.finished_at

        self.store.update(task_id, apply)
        if result.status == "failed":
            raise ToolError(
                f"{result.role.value} subtask failed on {result.worker}: {result.error}"
            )
        return f"{result.role.value} ({result.worker}) finished:\n{result.output}"
