"""MCP tools as agent-loop tools: a server's tool, offered as ``<server>__<tool>``."""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from typing import Any

import mcp_types
from mcp.shared.exceptions import MCPError
from opentelemetry import trace

from agentmesh_shared.agent.tools import ToolContext, ToolOutcome
from agentmesh_shared.mcp.client import McpHub, McpUnavailableError, RemoteTool
from agentmesh_shared.mcp.config import TOOL_NAME

log = logging.getLogger("agentmesh.mcp")


def render_result(result: mcp_types.CallToolResult, max_chars: int) -> str:
    """The result as text for the model, cut to ``max_chars`` with a note when longer."""
    parts: list[str] = []
    for block in result.content:
        if isinstance(block, mcp_types.TextContent):
            parts.append(block.text)
        elif isinstance(block, mcp_types.ImageContent | mcp_types.AudioContent):
            parts.append(
                f"[{block.mime_type} content, {len(block.data)} base64 characters, not shown]"
            )
        else:
            parts.append(json.dumps(block.model_dump(mode="json", exclude_none=True))[:2000])
    if not parts and result.structured_content is not None:
        parts.append(json.dumps(result.structured_content))
    text = "\n".join(parts) or "(no content)"
    if len(text) > max_chars:
        text = (
            text[:max_chars]
            + f"\n[result cut: {len(text)} characters, only the first {max_chars} are shown]"
        )
    return text


@dataclass(frozen=True)
class McpTool:
    """One tool of one MCP server, called through the worker's hub."""

    remote: RemoteTool
    hub: McpHub
    max_chars: int
    call_timeout_s: float

    @property
    def name(self) -> str:
        return self.remote.server.tool_name(self.remote.name)

    def schema(self) -> dict[str, Any]:
        schema = {k: v for k, v in self.remote.input_schema.items() if k != "title"}
        schema.setdefault("type", "object")
        return {
            "name": self.name,
            "description": f"[MCP server {self.remote.server.name}] {self.remote.description}"[
                :4000
            ],
            "input_schema": schema,
        }

    def invoke(self, raw: object, ctx: ToolContext) -> ToolOutcome:
        server = self.remote.server.name
        span = trace.get_current_span()
        span.set_attribute("agentmesh.mcp.server", server)
        span.set_attribute("agentmesh.mcp.tool", self.remote.name)
        if not isinstance(raw, dict):
            return ToolOutcome(f"invalid input for {self.name}: expected an object", is_error=True)
        timeout = self.call_timeout_s
        if ctx.deadline is not None:
            timeout = min(timeout, ctx.deadline - time.time())
            if timeout <= 0:
                return ToolOutcome(
                    f"{self.name} not called: the task's wall-clock limit passed", is_error=True
                )
        try:
            result = self.hub.call(server, self.remote.name, raw, timeout)
        except McpUnavailableError as err:
            return ToolOutcome(f"{self.name} failed: {err}", is_error=True)
        except MCPError as err:
            return ToolOutcome(f"{self.name} refused by its server: {err.message}", is_error=True)
        text = render_result(result, self.max_chars)
        if result.is_error:
            return ToolOutcome(f"{self.name} returned an error: {text}", is_error=True)
        return ToolOutcome(text)


def mcp_tools(hub: McpHub, *, max_chars: int, call_timeout_s: float) -> list[McpTool]:
    """The hub's tools whose names the model accepts (others are logged and left out)."""
    tools: list[McpTool] = []
    for remote in hub.tools():
        tool = McpTool(remote, hub, max_chars, call_timeout_s)
        if not TOOL_NAME.match(tool.name):
            log.warning("mcp tool %s left out: not a valid tool name for the model", tool.name)
            continue
        tools.append(tool)
    return tools
