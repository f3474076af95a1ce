"""Planning as steps: Claude plans a task, delegating subtasks to the worker queues.

A task is planned in steps, and a step runs on whichever planner replica claims the
task on the planning schedule (:mod:`agentmesh_orchestrator.schedule`). One step:
collect the results of the delegations the last model turn asked for; when all are
in, give them to the model as tool results and call it again; send the delegations
of its new turn (each ``delegate`` tool call becomes a Celery message on the
``research`` or ``code`` queue, all of one turn at once); checkpoint; end. Nothing
waits for a subtask: the step names the subtasks it awaits, the last of their
results wakes the task (the hand-off puts it back on the schedule) and the next step
continues from the checkpoint, so a waiting task costs a record in Redis, not a
thread, and a turn's delegations cost one step to send and one to collect.

A step also looks after its subtasks: a subtask whose worker stopped renewing its
lease (SIGKILL, OOM, a lost host) is sent again at once, and one with no result by
its deadline fails. Waiting tasks are looked at every ``AGENTMESH_PLAN_RECHECK_S``
for that, or sooner when a worker reports.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
import time
import uuid
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
    TaskLedger,
    Tool,
)
from agentmesh_shared.agent.loop import Message, final_text
from agentmesh_shared.budget import TokenBudget
from agentmesh_shared.handoff import Handoff, SubtaskView, result_fields
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
from agentmesh_shared.turns import TURNS
from celery import Celery
from kombu.exceptions import OperationalError
from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import SpanKind, StatusCode
from pydantic import BaseModel, Field, ValidationError

from agentmesh_orchestrator.schedule import Claim, PlanSchedule
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
IDLE_POLL_S = 0.5


class DelegateInput(BaseModel):
    role: Role = Field(description="who does the work: researcher or coder")
    instruction: str = Field(
        min_length=1, max_length=20_000, description="the subtask, self-contained"
    )


DELEGATE_TOOL: Tool[DelegateInput] = Tool(
    name="delegate",
    description=(
        "Send a subtask to a worker: role 'researcher' investigates and stores findings "
        "in shared memory; role 'coder' writes and runs Python. Returns the worker's result."
    ),
    input_model=DelegateInput,
    fn=lambda args, ctx: "",  # never invoked: delegations are sent and collected by steps
)


def subtask_id_for(task_id: str, tool_use_id: str) -> str:
    """Deterministic, so a resumed step finds the subtask it already sent."""
    return f"{task_id}-{hashlib.sha256(tool_use_id.encode()).hexdigest()[:12]}"


class LeaseLostError(RuntimeError):
    """Another replica owns the task now: this step must stop without writing."""


@dataclass
class _Delegation:
    """One ``delegate`` call of the model's last turn and what became of it."""

    tool_use_id: str
    subtask_id: str | None = None
    message: SubtaskMessage | None = None
    outcome: Message | None = None  # the tool_result block, once known
    give_up_at: float = 0.0


@dataclass
class Planner:
    """Runs planning steps for the tasks this replica claims, on a pool of threads."""

    settings: Settings
    redis: redis.Redis
    store: TaskStore
    celery: Celery
    llm_factory: Any  # Callable[[], anthropic.Anthropic]; raises LLMNotConfiguredError
    owner: str = ""
    _executor: ThreadPoolExecutor = field(init=False)
    _stepping: set[str] = field(default_factory=set)
    _guard: threading.Lock = field(default_factory=threading.Lock)
    _stop: threading.Event = field(default_factory=threading.Event)
    _threads: list[threading.Thread] = field(default_factory=list)
    _llm: anthropic.Anthropic | None = None

    def __post_init__(self) -> None:
        self.owner = self.owner or f"{self.settings.worker_hostname}-{uuid.uuid4().hex[:6]}"
        self._executor = ThreadPoolExecutor(
            max_workers=max(1, self.settings.planner_concurrency), thread_name_prefix="planner"
        )
        self.budget = TokenBudget(self.redis)
        self.handoff = Handoff(self.redis)
        self.schedule = PlanSchedule(self.redis, self.owner, self.settings.plan_lease_s)

    # -- lifecycle ----------------------------------------------------------------------
    def start(self) -> None:
        """Adopt unfinished tasks missing from the schedule, then claim steps until stopped."""
        adopted = self.schedule.enqueue(self.store.active_ids())
        if adopted:
            log.info("put %d unfinished task(s) back on the planning schedule", adopted)
        for target, name in ((self._claim_loop, "plan-claim"), (self._renew_loop, "plan-lease")):
            thread = threading.Thread(target=target, name=name, daemon=True)
            thread.start()
            self._threads.append(thread)

    def shutdown(self) -> None:
        """Stop claiming; steps in flight end, or their leases lapse for another replica."""
        self._stop.set()
        self._executor.shutdown(wait=False, cancel_futures=True)

    def llm(self) -> anthropic.Anthropic:
        if self._llm is None:
            self._llm = cast("anthropic.Anthropic", self.llm_factory())
        return self._llm

    def _free_slots(self) -> int:
        with self._guard:
            return max(1, self.settings.planner_concurrency) - len(self._stepping)

    def _claim_loop(self) -> None:
        while not self._stop.is_set():
            try:
                claimed = self.claim_due()
                if not claimed:
                    self.schedule.wait_for_work(IDLE_POLL_S)
            except redis.RedisError:
                log.warning("planning schedule unreachable; retrying", exc_info=True)
                self._stop.wait(REDIS_RETRY_S)

    def claim_due(self) -> int:
        """Claim due tasks up to the free threads and start their steps."""
        free = self._free_slots()
        if free <= 0:
            self._stop.wait(0.05)
            return -1
        claims = self.schedule.claim_due(free, look_at=free * 4 + 8)
        started = 0
        for claim in claims:
            with self._guard:
                # Its lease lapsed while this replica still runs its step (a stall
                # longer than the lease): the claim renewed it for that step, and the
                # step's end sets the next look.
                if claim.task_id in self._stepping:
                    continue
                self._stepping.add(claim.task_id)
            self._executor.submit(self._step_guarded, claim)
            started += 1
        return started

    def _renew_loop(self) -> None:
        interval = self.settings.plan_lease_s / 3
        while not self._stop.wait(interval):
            with self._guard:
                mine = list(self._stepping)
            try:
                self.renew_leases(mine)
            except redis.RedisError:
                log.warning("could not renew planning leases", exc_info=True)

    def renew_leases(self, mine: list[str]) -> set[str]:
        """Renew the leases of the steps ``mine`` (those running when it was read);
        the tasks whose lease another replica holds now, each with a warning."""
        held = self.schedule.renew(mine)
        lost = set(mine) - held
        with self._guard:
            # A step that ended meanwhile left _stepping before it released its
            # lease (_step_in_turn): its lease is gone because it is done, not lost.
            lost &= self._stepping
        for task_id in lost:
            log.warning("lost the planning lease of task %s", task_id)
        return lost

    # -- one step -------------------------------------------------------------------------
    def _step_guarded(self, claim: Claim) -> None:
        # The step's CPU work in one of the process's turns; it gives the turn up
        # while it waits on the model (agentmesh_shared.turns).
        with TURNS.turn():
            self._step_in_turn(claim)

    def _step_in_turn(self, claim: Claim) -> None:
        task_id = claim.task_id
        next_at: float | None = time.time() + REDIS_RETRY_S
        try:
            next_at = self.step(claim)
        except LeaseLostError:
            log.warning("task %s was taken over by another replica mid-step", task_id)
            return
        except (redis.RedisError, OperationalError):
            # The broker (state or queues) failed mid-step: the step runs again from the
            # task's checkpoint once Redis answers.
            log.warning(
                "the broker failed while planning %s; the step runs again", task_id, exc_info=True
            )
        except Exception:
            log.exception("planning task %s crashed", task_id)
            try:
                self._finish(
                    task_id, TaskStatus.FAILED, error="internal error while planning (see logs)"
                )
                next_at = None  # off the schedule only once its end is recorded
            except Exception:
                log.exception("could not record the failure of task %s; retrying", task_id)
        finally:
            self.store.forget(task_id)
            with self._guard:
                self._stepping.discard(task_id)
        try:
            self.schedule.release(task_id, next_at)
        except redis.RedisError:
            log.warning("could not release task %s; its lease lapses instead", task_id)

    def step(self, claim: Claim) -> float | None:
        """One planning step of a claimed task; returns when to look again, None when done."""
        # The step writes the record from the version it reads here (see TaskStore).
        record = self.store.get(claim.task_id, remember=True)
        if record is None or record.status.terminal:
            return None
        if claim.taken_over_from:
            events.publish(
                self.redis,
                record.id,
                "task.resumed",
                f"planner {self.owner} took the task over from {claim.taken_over_from}",
            )
        parent = telemetry.extract(
            {"traceparent": record.traceparent} if record.traceparent else None
        )
        token = otel_context.attach(parent)
        try:
            with _tracer.start_as_current_span(
                "task.plan",
                attributes={"agentmesh.task_id": record.id, "agentmesh.planner": self.owner},
            ):
                return self._advance(record)
        finally:
            otel_context.detach(token)

    def _advance(self, record: TaskRecord) -> float | None:
        task_id = record.id
        limits = record.limits
        deadline = record.created_at + limits.timeout_s
        first = record.status is TaskStatus.QUEUED
        if first:
            self.budget.open(
                task_id, limits.token_budget, ttl_s=int(limits.timeout_s) + keys.RETENTION_S
            )
            self.store.update(
                task_id,
                lambda r: setattr(r, "status", TaskStatus.RUNNING),
                events=[events.encode(task_id, "task.running", "planning started")],
            )
        # A queued task has no checkpoint: its first is written after this step's call.
        checkpoint = None if first else self.store.load_checkpoint(task_id)
        state = (
            LoopState.from_dict(json.loads(checkpoint))
            if checkpoint
            else LoopState(messages=[{"role": "user", "content": record.text}])
        )
        try:
            loop = AgentLoop(
                client=self.llm(),
                model=self.settings.model,
                system=SYSTEM_PROMPT,
                tools=[DELEGATE_TOOL],
                task_id=task_id,
                max_steps=limits.max_steps,
                deadline=deadline,
                max_tokens=self.settings.llm_max_tokens,
                llm_timeout_s=self.settings.llm_timeout_s,
                ledger=TaskLedger(
                    self.redis, task_id, step_event=lambda step: self._step_event(task_id, step)
                ),
                on_checkpoint=lambda s: self._checkpoint(task_id, s),
                agent_name="orchestrator",
            )
            return self._run_steps(record, state, loop, deadline)
        except (LLMNotConfiguredError, LoopLimitError) as err:
            self._finish(task_id, TaskStatus.FAILED, error=str(err))
        except CancelledError:
            self._finish(task_id, TaskStatus.CANCELLED, error="cancelled by request")
        except anthropic.APIError as err:
            self._finish(task_id, TaskStatus.FAILED, error=f"model call failed: {err}")
        return None

    def _run_steps(
        self, record: TaskRecord, state: LoopState, loop: AgentLoop, deadline: float
    ) -> float | None:
        """Model calls and tool results until the task waits on subtasks or ends."""
        task_id = record.id
        checked = False  # the model call just made read the cancel flag after its reply
        while True:
            # A model call reads the cancel flag itself (the ledger), before and after.
            if not checked and (
                state.pending_tool_uses() or state.messages[-1]["role"] == "assistant"
            ):
                loop.check_cancelled()
            checked = False
            if state.pending_tool_uses():
                results, next_at = self._collect(record, state, deadline)
                if results is None:
                    return next_at
                state.messages.append({"role": "user", "content": results})
                self._checkpoint(task_id, state)
                continue
            if state.messages[-1]["role"] == "assistant":
                self._conclude(task_id, final_text(state.messages[-1]))
                return None
            if not self.schedule.held(task_id):
                raise LeaseLostError(task_id)
            loop.call_model(state)
            checked = True

    def _conclude(self, task_id: str, text: str) -> None:
        record = self.store.get(task_id)
        subtasks = record.subtasks if record else []
        failed = [s for s in subtasks if s.status is TaskStatus.FAILED]
        if subtasks and len(failed) == len(subtasks):
            # Nothing the answer rests on was done: the task failed, with the reasons.
            reasons = "; ".join(f"{s.role.value}: {s.error}" for s in failed)
            self._finish(
                task_id, TaskStatus.FAILED, result=text, error=f"every subtask failed: {reasons}"
            )
            return
        note = f" ({len(failed)} subtask(s) failed)" if failed else ""
        self._finish(task_id, TaskStatus.SUCCEEDED, result=text, note=note)

    def _checkpoint(self, task_id: str, state: LoopState) -> None:
        def apply(r: TaskRecord) -> None:
            r.steps = state.steps
            r.usage = state.usage + sum((s.usage for s in r.subtasks), Usage())

        # The checkpoint and the record's steps and usage, in one step.
        self.store.update(task_id, apply, checkpoint=json.dumps(state.to_dict()))

    def _step_event(self, task_id: str, step: StepRecord) -> str:
        calls = ", ".join(step.tool_calls) or "final answer"
        return events.encode(
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
        checkpoint = self.store.load_checkpoint(task_id)
        planner_usage = LoopState.from_dict(json.loads(checkpoint)).usage if checkpoint else Usage()
        ended: list[bool] = []

        def apply(r: TaskRecord) -> None:
            if r.status.terminal:
                return
            r.status = status
            r.result = result
            r.error = error
            r.finished_at = time.time()
            r.usage = planner_usage + sum((s.usage for s in r.subtasks), Usage())
            ended.append(True)

        try:
            self.store.update(task_id, apply)
        except KeyError:
            return
        if not ended:
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

    # -- delegations ----------------------------------------------------------------------
    def _collect(
        self, record: TaskRecord, state: LoopState, task_deadline: float
    ) -> tuple[list[Message] | None, float]:
        """Send the last turn's delegations not yet sent and gather their results.

        Returns the tool results when every delegation has an outcome, else None and
        when to look again.
        """
        task_id = record.id
        blocks = state.pending_tool_uses()
        calls = [_Delegation(tool_use_id=str(b["id"])) for b in blocks]
        unsent: list[SubtaskMessage] = []
        known = {s.id: s for s in record.subtasks}
        for call, block in zip(calls, blocks, strict=True):
            if block.get("name") != DELEGATE_TOOL.name:
                call.outcome = _error_block(call, f"unknown tool {block.get('name')!r}")
                continue
            try:
                args = DelegateInput.model_validate(block.get("input", {}))
            except ValidationError as err:
                problems = "; ".join(
                    f"{'.'.join(str(p) for p in e['loc']) or 'input'}: {e['msg']}"
                    for e in err.errors()
                )
                call.outcome = _error_block(call, f"invalid input for delegate: {problems}")
                continue
            call.subtask_id = subtask_id_for(task_id, call.tool_use_id)
            sub = known.get(call.subtask_id)
            sent_at = sub.dispatched_at if sub is not None else None
            deadline = min(
                task_deadline, (sent_at or time.time()) + self.settings.subtask_timeout_s
            )
            call.give_up_at = deadline + RESULT_GRACE_S
            call.message = SubtaskMessage(
                task_id=task_id,
                subtask_id=call.subtask_id,
                role=args.role,
                instruction=args.instruction,
                max_steps=record.limits.max_steps,
                deadline=deadline,
            )
            if sent_at is None:
                unsent.append(call.message)
        if unsent:
            record.subtasks = self._delegate(task_id, unsent)

        sent = [c for c in calls if c.outcome is None and c.message is not None]
        views = self.handoff.snapshot([cast("str", c.subtask_id) for c in sent])
        changes: dict[str, dict[str, Any]] = {}
        for call in sent:
            assert call.message is not None and call.subtask_id is not None
            view = views[call.subtask_id]
            call.outcome, change = self._judge(record, call, view)
            if change:
                changes[call.subtask_id] = change
        if changes:
            self._apply_subtask_changes(task_id, changes)
        if all(c.outcome is not None for c in calls):
            return [cast("Message", c.outcome) for c in calls], time.time()
        waiting = [c for c in calls if c.outcome is None]
        # Only the last of their results wakes the task: one step for all of them.
        self.handoff.await_results(task_id, [cast("str", c.subtask_id) for c in waiting])
        return None, min(
            [time.time() + self.settings.plan_recheck_s, *(c.give_up_at for c in waiting)]
        )

    def _judge(
        self, record: TaskRecord, call: _Delegation, view: SubtaskView
    ) -> tuple[Message | None, dict[str, Any]]:
        """The tool result of one sent delegation, if it has one, and what to record."""
        assert call.message is not None and call.subtask_id is not None
        sub = next((s for s in record.subtasks if s.id == call.subtask_id), None)
        if sub is not None and sub.status is TaskStatus.FAILED and view.result is None:
            return _error_block(call, f"delegate failed: {sub.error}"), {}
        if view.result is not None:
            return _result_block(call, view.result), result_fields(view.result)
        now = time.time()
        if view.started is not None and not view.leased:
            resends = (sub.resends if sub else 0) + 1
            if resends > MAX_RESENDS:
                error = f"lost its worker {resends} times (last: {view.started.worker})"
                return _error_block(call, f"delegate failed: {error}"), {
                    "status": TaskStatus.FAILED,
                    "error": error,
                    "finished_at": now,
                }
            log.warning(
                "subtask %s lost its worker %s; sending it again",
                call.subtask_id,
                view.started.worker,
            )
            events.publish(
                self.redis,
                record.id,
                "subtask.resent",
                f"worker {view.started.worker} stopped renewing subtask {call.subtask_id}; sent again",
                subtask_id=call.subtask_id,
                worker=view.started.worker,
            )
            self.handoff.forget_start(call.subtask_id)
            self._send(call.message)
            return None, {
                "status": TaskStatus.QUEUED,
                "worker": None,
                "resends": resends,
                "dispatched_at": sub.dispatched_at if sub else now,
            }
        if now > call.give_up_at:
            error = f"no result within the subtask's time limit ({self.settings.subtask_timeout_s:.0f}s)"
            return _error_block(call, f"delegate failed: {error}"), {
                "status": TaskStatus.FAILED,
                "error": error,
                "finished_at": now,
            }
        if view.started is not None and sub is not None and sub.status is TaskStatus.QUEUED:
            return None, {
                "status": TaskStatus.RUNNING,
                "worker": view.started.worker,
                "started_at": view.started.at,
            }
        return None, {}

    def _delegate(self, task_id: str, messages: list[SubtaskMessage]) -> list[SubtaskRecord]:
        """Record the subtasks, then send them: a crash in between leaves them to send."""
        if not self.schedule.held(task_id):
            raise LeaseLostError(task_id)

        def add(r: TaskRecord) -> None:
            present = {s.id for s in r.subtasks}
            r.subtasks.extend(
                SubtaskRecord(id=m.subtask_id, role=m.role, instruction=m.instruction)
                for m in messages
                if m.subtask_id not in present
            )

        # Recorded with their events before they are sent: a worker's "started" comes
        # after them in the task's events.
        queued = [
            events.encode(
                task_id,
                "subtask.queued",
                f"delegated {m.role.value} subtask {m.subtask_id}",
                subtask_id=m.subtask_id,
            )
            for m in messages
        ]
        self.store.update(task_id, add, events=queued)
        sent_at: dict[str, dict[str, Any]] = {}
        for message in messages:
            with _tracer.start_as_current_span(
                "delegate",
                attributes={
                    "agentmesh.subtask_id": message.subtask_id,
                    "agentmesh.role": message.role.value,
                },
            ):
                self._send(message)
            sent_at[message.subtask_id] = {"dispatched_at": time.time()}
        return self._apply_subtask_changes(task_id, sent_at).subtasks

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

    def _apply_subtask_changes(
        self, task_id: str, changes: dict[str, dict[str, Any]]
    ) -> TaskRecord:
        def apply(r: TaskRecord) -> None:
            for s in r.subtasks:
                change = changes.get(s.id)
                if change is None or (s.status.terminal and "status" in change):
                    continue
                for name, value in change.items():
                    setattr(s, name, value)

        return self.store.update(task_id, apply)


def _result_block(call: _Delegation, result: SubtaskResult) -> Message:
    if result.status == "failed":
        return _error_block(
            call,
            f"delegate failed: {result.role.value} subtask failed on {result.worker}: {result.error}",
        )
    return {
        "type": "tool_result",
        "tool_use_id": call.tool_use_id,
        "content": f"{result.role.value} ({result.worker}) finished:\n{result.output}",
    }


def _error_block(call: _Delegation, text: str) -> Message:
    return {
        "type": "tool_result",
        "tool_use_id": call.tool_use_id,
        "content": text,
        "is_error": True,
    }
