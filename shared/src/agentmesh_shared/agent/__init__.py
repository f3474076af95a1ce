"""The agent loop: Claude tool use with typed tools, limits and checkpoints."""

from agentmesh_shared.agent.loop import (
    AgentLoop,
    CancelledError,
    LoopLimitError,
    LoopOutcome,
    LoopState,
    StepRecord,
)
from agentmesh_shared.agent.tools import Tool, ToolContext, ToolError

__all__ = [
    "AgentLoop",
    "CancelledError",
    "LoopLimitError",
    "LoopOutcome",
    "LoopState",
    "StepRecord",
    "Tool",
    "ToolContext",
    "ToolError",
]
