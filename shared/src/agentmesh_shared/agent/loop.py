"""The agent loop shared by the orchestrator and every worker.

One step is one Messages API call. When Claude asks for tools, every tool call of
that turn runs in parallel and the results go back as one user turn. The loop stops
at the model's final answer, or raises :class:`LoopLimitError` naming the limit it
hit (steps, wall clock, token budget). ``on_checkpoint`` is called after every change
of state, so a caller can persist it and resume a loop from where it stopped.
"""

from __future__ import annotations

import contextvars
import copy
import json
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any

import anthropic
from opentelemetry.trace import Span, SpanKind, StatusCode

from agentmesh_shared import metrics
from agentmesh_shared.agent.ledger import TaskLedger
from agentmesh_shared.agent.tools import AgentTool, ToolContext, ToolOutcome
from agentmesh_shared.models import Usage
from agentmesh_shared.telemetry import capture_content, inject, tracer
from agentmesh_shared.turns import TURNS

_tracer = tracer("agentmesh.agent")

Message = dict[str, Any]


class LoopLimitError(RuntimeError):
    """The loop hit one of its limits; ``limit`` names it."""

    def __init__(self, limit: str, detail: str) -> None:
        super().__init__(f"{limit} limit reached: {detail}")
        self.limit = limit


class CancelledError(RuntimeError):
    """The task was cancelled while the loop ran."""


CANCELLED = "the task was cancelled"


@dataclass
class LoopState:
    messages: list[Message] = field(default_factory=list)
    steps: int = 0
    usage: Usage = field(default_factory=Usage)

    def to_dict(self) -> dict[str, Any]:
        """A snapshot that later steps do not change."""
        return {
            "messages": copy.deepcopy(self.messages),
            "steps": self.steps,
            "usage": self.usage.model_dump(),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LoopState:
        return cls(
            messages=list(data["messages"]),
            steps=int(data["steps"]),
            usage=Usage.model_validate(data["usage"]),
        )

    def pending_tool_uses(self) -> list[Message]:
        """Tool calls of the last assistant turn that have no results yet."""
        if not self.messages or self.messages[-1]["role"] != "assistant":
            return []
        content = self.messages[-1]["content"]
        return [b for b in content if isinstance(b, dict) and b.get("type") == "tool_use"]


@dataclass(frozen=True)
class StepRecord:
    step: int
    stop_reason: str | None
    usage: Usage
    tool_calls: tuple[str, ...]
    duration_s: float
    model: str


@dataclass(frozen=True)
class LoopOutcome:
    text: str
    state: LoopState


@dataclass
class AgentLoop:
    client: anthropic.Anthropic
    model: str
    system: str
    tools: Sequence[AgentTool]
    task_id: str
    max_steps: int
    deadline: float
    max_tokens: int = 4096
    llm_timeout_s: float = 120.0
    subtask_id: str | None = None
    # The task's cancel flag, token budget and events (None: none of them).
    ledger: TaskLedger | None = None
    on_checkpoint: Callable[[LoopState], None] | None = None
    on_step: Callable[[StepRecord], None] | None = None
    tool_extra: dict[str, Any] = field(default_factory=dict)
    agent_name: str = "agent"
    on_progress: Callable[[], None] | None = None

    def __post_init__(self) -> None:
        self._by_name = {t.name: t for t in self.tools}

    # -- public -----------------------------------------------------------------------
    def run(self, prompt: str | None = None, state: LoopState | None = None) -> LoopOutcome:
        """Run to the final answer, starting fresh from ``prompt`` or resuming ``state``."""
        if state is None:
            if prompt is None:
                msg = "run() needs a prompt or a state to resume"
                raise ValueError(msg)
            state = LoopState(messages=[{"role": "user", "content": prompt}])
        with _tracer.start_as_current_span(
            f"invoke_agent {self.agent_name}",
            attributes={
                "gen_ai.operation.name": "invoke_agent",
                "gen_ai.agent.name": self.agent_name,
                "gen_ai.provider.name": "anthropic",
                "gen_ai.request.model": self.model,
                "agentmesh.task_id": self.task_id,
                "agentmesh.subtask_id": self.subtask_id or "",
            },
        ) as span:
            try:
                outcome = self._run(state)
            except Exception as err:
                span.record_exception(err)
                span.set_status(StatusCode.ERROR, str(err))
                raise
            span.set_attribute("agentmesh.steps", state.steps)
            span.set_attribute("gen_ai.usage.input_tokens", state.usage.input_tokens)
            span.set_attribute("gen_ai.usage.output_tokens", state.usage.output_tokens)
            return outcome

    def _run(self, state: LoopState) -> LoopOutcome:
        checked = False  # the cancel flag was read since the last model call's reply
        while True:
            if state.pending_tool_uses():
                # Resumed between a model call and its tools: finish that step.
                self.check_cancelled()
                with self._step_span(state.steps):
                    self._tools_step(state)
                continue
            if state.messages and state.messages[-1]["role"] == "assistant":
                if not checked:
                    self.check_cancelled()
                return LoopOutcome(final_text(state.messages[-1]), state)
            with self._step_span(state.steps + 1):
                # The ledger reads the cancel flag before the call and after it.
                cancelled = self._call_model(state)
                self._checkpoint(state)
                if cancelled:
                    raise CancelledError(CANCELLED)
                checked = True
                if state.pending_tool_uses():
                    self._tools_step(state)
                    checked = False

    def call_model(self, state: LoopState) -> None:
        """One step's model call alone, for a caller that runs the tools itself.

        The planner does: its tool calls are delegations whose results arrive later,
        in another planning step, perhaps on another replica. Raises
        :class:`CancelledError` if the task was cancelled before the call or during it.
        """
        with self._step_span(state.steps + 1):
            cancelled = self._call_model(state)
            self._checkpoint(state)
        if cancelled:
            raise CancelledError(CANCELLED)

    def _step_span(self, step: int) -> AbstractContextManager[Span]:
        return _tracer.start_as_current_span(
            "agent.step", attributes={"agentmesh.step": step, "gen_ai.agent.name": self.agent_name}
        )

    def _tools_step(self, state: LoopState) -> None:
        # Tools wait on other services (memory, the sandbox, MCP servers, the web), or
        # run on threads of their own: not in this thread's CPU turn.
        with TURNS.released():
            results = self._run_tools(state.pending_tool_uses(), state)
        state.messages.append({"role": "user", "content": results})
        self._checkpoint(state)

    # -- one model call -------------------------------------------------------------
    def _progress(self) -> None:
        if self.on_progress is not None:
            self.on_progress()

    def _call_model(self, state: LoopState) -> bool:
        """One model call; whether the task was cancelled meanwhile (the ledger's
        read after the call)."""
        self._progress()
        cancelled, spent = self.ledger.before_call() if self.ledger else (False, None)
        if cancelled:
            raise CancelledError(CANCELLED)
        if state.steps >= self.max_steps:
            raise LoopLimitError("max_steps", f"{state.steps} of {self.max_steps} steps used")
        remaining = self.deadline - time.time()
        if remaining <= 0:
            raise LoopLimitError("timeout", "the wall-clock limit passed")
        if spent is not None:
            raise LoopLimitError("token_budget", str(spent)) from spent
        started = time.monotonic()
        with _tracer.start_as_current_span(
            f"chat {self.model}",
            kind=SpanKind.CLIENT,
            attributes={
                "gen_ai.operation.name": "chat",
                "gen_ai.provider.name": "anthropic",
                "gen_ai.system": "anthropic",
                "gen_ai.request.model": self.model,
                "gen_ai.request.max_tokens": self.max_tokens,
                "gen_ai.agent.name": self.agent_name,
            },
        ) as span:
            if capture_content():
                span.set_attribute("gen_ai.input.messages", json.dumps(state.messages)[:100_000])
            try:
                response = self.client.messages.create(
                    model=self.model,
                    max_tokens=self.max_tokens,
                    system=self.system,
                    tools=[t.schema() for t in self.tools],  # type: ignore[misc]
                    messages=state.messages,  # type: ignore[arg-type]
                    timeout=min(self.llm_timeout_s, remaining),
                    # The model gateway records usage per task and continues this trace.
                    extra_headers={"x-agentmesh-task-id": self.task_id, **inject()},
                )
            except Exception as err:
                span.record_exception(err)
                span.set_status(StatusCode.ERROR, f"{type(err).__name__}: {err}")
                span.set_attribute("error.type", type(err).__name__)
                raise
            span.set_attribute("gen_ai.response.model", response.model)
            span.set_attribute("gen_ai.response.id", response.id)
            span.set_attribute(
                "gen_ai.response.finish_reasons", [response.stop_reason or "unknown"]
            )
            span.set_attribute("gen_ai.usage.input_tokens", response.usage.input_tokens)
            span.set_attribute("gen_ai.usage.output_tokens", response.usage.output_tokens)
            if capture_content():
                span.set_attribute(
                    "gen_ai.output.messages",
                    json.dumps([b.model_dump(mode="json") for b in response.content])[:100_000],
                )
        metrics.record_tokens(
            self.model, self.agent_name, response.usage.input_tokens, response.usage.output_tokens
        )
        usage = Usage(
            input_tokens=response.usage.input_tokens, output_tokens=response.usage.output_tokens
        )
        self._progress()
        state.steps += 1
        state.usage = state.usage + usage
        content = [block.model_dump(mode="json", exclude_none=True) for block in response.content]
        for block in content:
            if block.get("type") == "text":
                block.pop("citations", None)
        state.messages.append({"role": "assistant", "content": content})
        record = StepRecord(
            step=state.steps,
            stop_reason=response.stop_reason,
            usage=usage,
            tool_calls=tuple(b["name"] for b in content if b.get("type") == "tool_use"),
            duration_s=time.monotonic() - started,
            model=response.model,
        )
        cancelled = self.ledger.after_call(record) if self.ledger is not None else False
        if self.on_step is not None:
            self.on_step(record)
        return cancelled

    # -- tools ------------------------------------------------------------------------
    def _run_tools(self, calls: list[Message], state: LoopState) -> list[Message]:
        def run_one(call: Message) -> Message:
            outcome = self._invoke(call, state.steps)
            block: Message = {
                "type": "tool_result",
                "tool_use_id": call["id"],
                "content": outcome.content,
            }
            if outcome.is_error:
                block["is_error"] = True
            return block

        if len(calls) == 1:
            return [run_one(calls[0])]
        with ThreadPoolExecutor(max_workers=len(calls), thread_name_prefix="tool") as pool:
            futures = [pool.submit(contextvars.copy_context().run, run_one, c) for c in calls]
            return [f.result() for f in futures]

    def _invoke(self, call: Message, step: int) -> ToolOutcome:
        self._progress()
        try:
            return self._invoke_traced(call, step)
        finally:
            self._progress()

    def _invoke_traced(self, call: Message, step: int) -> ToolOutcome:
        name = str(call.get("name"))
        with _tracer.start_as_current_span(
            f"execute_tool {name}",
            attributes={
                "gen_ai.operation.name": "execute_tool",
                "gen_ai.tool.name": name,
                "gen_ai.tool.call.id": str(call.get("id")),
                "gen_ai.agent.name": self.agent_name,
            },
        ) as span:
            tool = self._by_name.get(name)
            if tool is None:
                outcome = ToolOutcome(f"unknown tool {name!r}", is_error=True)
            else:
                ctx = ToolContext(
                    task_id=self.task_id,
                    subtask_id=self.subtask_id,
                    tool_use_id=str(call["id"]),
                    step=step,
                    extra=self.tool_extra,
                    deadline=self.deadline,
                )
                outcome = tool.invoke(call.get("input", {}), ctx)
            if outcome.is_error:
                span.set_status(StatusCode.ERROR, outcome.content[:500])
            return outcome

    def _checkpoint(self, state: LoopState) -> None:
        if self.on_checkpoint is not None:
            self.on_checkpoint(state)

    def check_cancelled(self) -> None:
        if self.ledger is not None and self.ledger.cancelled():
            raise CancelledError(CANCELLED)


def final_text(message: Message) -> str:
    parts = [b.get("text", "") for b in message["content"] if b.get("type") == "text"]
    return "\n".join(p for p in parts if p).strip()
