"""Tools as typed functions: a pydantic model for the input, its JSON schema for Claude."""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Generic, Protocol, TypeVar

from pydantic import BaseModel, ValidationError

A = TypeVar("A", bound=BaseModel)


@functools.cache
def _input_schema(model: type[BaseModel]) -> dict[str, Any]:
    """``model``'s JSON schema without its title, made once per model.

    The agent loop sends every tool's schema with every model call; pydantic builds a
    schema afresh each time it is asked (~0.25 ms a model), so it is kept here. Read
    only: callers serialise it, none changes it.
    """
    schema = model.model_json_schema()
    schema.pop("title", None)
    return schema


class ToolError(Exception):
    """A tool failed in a way the model should see and may recover from."""


@dataclass
class ToolContext:
    """What a tool call knows about where it runs."""

    task_id: str
    subtask_id: str | None
    tool_use_id: str
    step: int
    extra: dict[str, Any] = field(default_factory=dict)
    # The loop's wall-clock deadline (epoch seconds): a tool call must end by then.
    deadline: float | None = None


@dataclass(frozen=True)
class ToolOutcome:
    content: str
    is_error: bool = False


class AgentTool(Protocol):
    """What the agent loop needs of a tool: built-in (:class:`Tool`) or an MCP server's."""

    @property
    def name(self) -> str: ...

    def schema(self) -> dict[str, Any]: ...

    def invoke(self, raw: object, ctx: ToolContext) -> ToolOutcome: ...


@dataclass(frozen=True)
class Tool(Generic[A]):
    name: str
    description: str
    input_model: type[A]
    fn: Callable[[A, ToolContext], str]

    def schema(self) -> dict[str, Any]:
        """The tool as the Messages API takes it (the model's JSON schema is made once)."""
        return {
            "name": self.name,
            "description": self.description,
            "input_schema": _input_schema(self.input_model),
        }

    def invoke(self, raw: object, ctx: ToolContext) -> ToolOutcome:
        try:
            args = self.input_model.model_validate(raw)
        except ValidationError as err:
            problems = "; ".join(
                f"{'.'.join(str(p) for p in e['loc']) or 'input'}: {e['msg']}" for e in err.errors()
            )
            return ToolOutcome(f"invalid input for {self.name}: {problems}", is_error=True)
        try:
            return ToolOutcome(self.fn(args, ctx))
        except ToolError as err:
            return ToolOutcome(f"{self.name} failed: {err}", is_error=True)
