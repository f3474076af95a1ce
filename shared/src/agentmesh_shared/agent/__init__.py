"""The agent loop: Claude tool use with typed tools, limits and checkpoints."""

from agentmesh_shared.agent.ledger import TaskLedger
from agentmesh_shared.agent.loop import (
    AgentLoop,
    CancelledError,
    LoopLimitError,
    LoopOutcome,
    LoopState,
    StepRecord,
)
from agentmesh_shared.agent.tools import AgentTool, Tool, ToolContext, ToolError, ToolOutcome

__all__ = [
    "AgentLoop",
    "AgentTool",
    "CancelledError",
    "LoopLimitError",
    "LoopOutcome",
    "LoopState",
    "StepRecord",
    "TaskLedger",
    "Tool",
    "ToolContext",
    "ToolError",
    "ToolOutcome",
]
