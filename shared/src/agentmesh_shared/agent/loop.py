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
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import anthropic

from agentmesh_shared.agent.tools import Tool, ToolContext, ToolOutcome
from agentmesh_shared.budget import BudgetExceededError, TokenBudget
from agentmesh_shared.models import Usage

Message = dict[str, Any]


class LoopLimitError(RuntimeError):
    """The loop hit one of its limits; ``limit`` names it."""

    def __init__(self, limit: str, detail: str) -> None:
        super().__init__(f"{limit} limit reached: {detail}")
        self.limit = limit


class CancelledError(RuntimeError):
    """The task was cancelled while the loop ran."""


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
    tools: Sequence[Tool[Any]]
    task_id: str
    max_steps: int
    deadline: float
    max_tokens: int = 4096
    llm_timeout_s: float = 120.0
    subtask_id: str | None = None
    budget: TokenBudget | None = None
    is_cancelled: Callable[[], bool] | None = None
    on_checkpoint: Callable[[LoopState], None] | None = None
    on_step: Callable[[StepRecord], None] | None = None
    tool_extra: dict[str, Any] = field(default_factory=dict)

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
        while True:
            self._check_cancelled()
            pending = state.pending_tool_uses()
            if pending:
                state.messages.append({"role": "user", "content": self._run_tools(pending, state)})
                self._checkpoint(state)
                continue
            if state.messages and state.messages[-1]["role"] == "assistant":
                return LoopOutcome(_final_text(state.messages[-1]), state)
            self._call_model(state)
            self._checkpoint(state)

    # -- one model call -------------------------------------------------------------
    def _call_model(self, state: LoopState) -> None:
        if state.steps >= self.max_steps:
            raise LoopLimitError("max_steps", f"{state.steps} of {self.max_steps} steps used")
        remaining = self.deadline - time.time()
        if remaining <= 0:
            raise LoopLimitError("timeout", "the wall-clock limit passed")
        if self.budget is not None:
            try:
                self.budget.ensure_available(self.task_id)
            except BudgetExceededError as err:
                raise LoopLimitError("token_budget", str(err)) from err
        started = time.monotonic()
        response = self.client.messages.create(
            model=self.model,
            max_tokens=self.max_tokens,
            system=self.system,
            tools=[t.schema() for t in self.tools],  # type: ignore[misc]
            messages=state.messages,  # type: ignore[arg-type]
            timeout=min(self.llm_timeout_s, remaining),
        )
        usage = Usage(
            input_tokens=response.usage.input_tokens, output_tokens=response.usage.output_tokens
        )
        state.steps += 1
        state.usage = state.usage + usage
        if self.budget is not None:
            self.budget.consume(self.task_id, usage.total)
        content = [block.model_dump(mode="json", exclude_none=True) for block in response.content]
        for block in content:
            block.pop("citations", None) if block.get("type") == "text" else None
        state.messages.append({"role": "assistant", "content": content})
        if self.on_step is not None:
            self.on_step(
                StepRecord(
                    step=state.steps,
                    stop_reason=response.stop_reason,
                    usage=usage,
                    tool_calls=tuple(b["name"] for b in content if b.get("type") == "tool_use"),
                    duration_s=time.monotonic() - started,
                    model=response.model,
                )
            )

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
        tool = self._by_name.get(str(call.get("name")))
        if tool is None:
            return ToolOutcome(f"unknown tool {call.get('name')!r}", is_error=True)
        ctx = ToolContext(
            task_id=self.task_id,
            subtask_id=self.subtask_id,
            tool_use_id=str(call["id"]),
            step=step,
            extra=self.tool_extra,
        )
        return tool.invoke(call.get("input", {}), ctx)

    def _checkpoint(self, state: LoopState) -> None:
        if self.on_checkpoint is not None:
            self.on_checkpoint(state)

    def _check_cancelled(self) -> None:
        if self.is_cancelled is not None and self.is_cancelled():
            msg = "the task was cancelled"
            raise CancelledError(msg)


def _final_text(message: Message) -> str:
    parts = [b.get("text", "") for b in message["content"] if b.get("type") == "text"]
    return "\n".join(p for p in parts if p).strip()
