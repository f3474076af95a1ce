"""MCP tool servers: the configuration a user edits, the worker's connections, the tools."""

from agentmesh_shared.mcp.client import McpHub, McpUnavailableError, RemoteTool
from agentmesh_shared.mcp.config import (
    McpConfig,
    McpConfigError,
    McpServerConfig,
    load_config,
    parse_config,
)
from agentmesh_shared.mcp.tools import McpTool, mcp_tools, render_result

__all__ = [
    "McpConfig",
    "McpConfigError",
    "McpHub",
    "McpServerConfig",
    "McpTool",
    "McpUnavailableError",
    "RemoteTool",
    "load_config",
    "mcp_tools",
    "parse_config",
    "render_result",
]
