"""The MCP servers a user adds: one YAML file, validated at start, errors naming the line.

    servers:
      fetch:                              # a name: lower case, digits, dashes
        url: http://mcp-fetch:8000/mcp    # streamable HTTP endpoint
        roles: [researcher]               # who may use its tools
        tools: [fetch]                    # optional: only these of its tools
        token_file: /run/secrets/x        # optional: sent as "Authorization: Bearer ..."

A tool reaches the model as ``<server>__<tool>``: server names hold no underscore and
built-in tool names no double underscore, so no two tools can share a name.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, HttpUrl, ValidationError, field_validator

from agentmesh_shared.models import Role

SERVER_NAME = re.compile(r"^[a-z][a-z0-9]*(?:-[a-z0-9]+)*$")
SEPARATOR = "__"
# Claude's tool names: letters, digits, "_" and "-", at most 64 characters.
TOOL_NAME = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")


class McpConfigError(ValueError):
    """mcp.yaml is invalid; the message names the file, the line and the problem."""


class McpServerConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(min_length=1, max_length=24)
    url: HttpUrl
    roles: Annotated[list[Role], Field(min_length=1)]
    tools: list[str] | None = None
    token_file: Path | None = None
    timeout_s: float | None = Field(None, gt=0, le=3600)

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not SERVER_NAME.match(value):
            msg = "a server name is lower-case letters, digits and single dashes (e.g. my-tools)"
            raise ValueError(msg)
        return value

    @field_validator("roles", mode="before")
    @classmethod
    def _roles(cls, value: Any) -> Any:
        if isinstance(value, list):
            known = {r.value for r in Role}
            unknown = [v for v in value if isinstance(v, str) and v not in known]
            if unknown:
                msg = f"unknown role {unknown[0]!r}: a role is one of {', '.join(sorted(known))}"
                raise ValueError(msg)
        return value

    def token(self) -> str | None:
        """The credential from its secret file, read when a connection is made."""
        if self.token_file is None:
            return None
        try:
            value = self.token_file.read_text().strip()
        except OSError as err:
            msg = (
                f"mcp server {self.name}: cannot read token_file {self.token_file}: {err.strerror}"
            )
            raise McpConfigError(msg) from None
        if not value:
            msg = f"mcp server {self.name}: token_file {self.token_file} is empty"
            raise McpConfigError(msg)
        return value

    def tool_name(self, tool: str) -> str:
        """The name the model sees for one of this server's tools."""
        return f"{self.name}{SEPARATOR}{tool}"

    def allows(self, tool: str) -> bool:
        return self.tools is None or tool in self.tools


class McpConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    servers: list[McpServerConfig] = Field(default_factory=list)

    def for_role(self, role: Role) -> list[McpServerConfig]:
        return [s for s in self.servers if role in s.roles]


def _node_at(root: yaml.Node, loc: tuple[int | str, ...]) -> yaml.Node:
    """The YAML node a pydantic error location points at (as deep as it exists)."""
    node = root
    for part in loc:
        if isinstance(node, yaml.MappingNode):
            match = next((v for k, v in node.value if k.value == part), None)
            if match is None:
                break
            node = match
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int):
            if part >= len(node.value):
                break
            node = node.value[part]
        else:
            break
    return node


def _duplicate_keys(node: yaml.Node) -> Iterator[yaml.Node]:
    if isinstance(node, yaml.MappingNode):
        seen: set[str] = set()
        for key, value in node.value:
            if key.value in seen:
                yield key
            seen.add(key.value)
            yield from _duplicate_keys(value)
    elif isinstance(node, yaml.SequenceNode):
        for item in node.value:
            yield from _duplicate_keys(item)


def parse_config(text: str, source: str = "mcp.yaml") -> McpConfig:
    """Validate the text of mcp.yaml; :class:`McpConfigError` names the line of each problem."""
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as err:
        raise McpConfigError(f"{source}: not valid YAML: {err}") from None
    if root is None:
        return McpConfig()
    problems = [
        f"{source}:{key.start_mark.line + 1}: duplicate name {key.value!r}"
        for key in _duplicate_keys(root)
    ]
    if problems:
        raise McpConfigError("\n".join(problems))
    data = yaml.safe_load(text)
    if not isinstance(data, dict):
        raise McpConfigError(f"{source}:1: expected a mapping with a 'servers' key")
    servers = data.get("servers")
    # servers is a mapping of name -> settings: the name is the key.
    shaped: dict[str, Any] = {**data}
    if isinstance(servers, dict):
        shaped["servers"] = [
            {"name": str(name), **value} if isinstance(value, dict) else value
            for name, value in servers.items()
        ]
    elif servers is not None:
        node = _node_at(root, ("servers",))
        raise McpConfigError(
            f"{source}:{node.start_mark.line + 1}: servers must be a mapping of name to settings"
        )
    try:
        return McpConfig.model_validate(shaped)
    except ValidationError as err:
        lines = []
        for error in err.errors():
            loc = tuple(error["loc"])
            yaml_loc: tuple[int | str, ...] = loc
            if len(loc) >= 2 and loc[0] == "servers" and isinstance(loc[1], int):
                name = shaped["servers"][loc[1]]
                key = name.get("name") if isinstance(name, dict) else loc[1]
                yaml_loc = ("servers", str(key), *loc[2:])
            if yaml_loc[-1:] == ("name",):
                yaml_loc = yaml_loc[:-1]
                node = next(
                    (k for k, _ in _node_at(root, ("servers",)).value if k.value == yaml_loc[-1]),
                    _node_at(root, yaml_loc),
                )
            else:
                node = _node_at(root, yaml_loc)
            where = ".".join(str(p) for p in yaml_loc)
            lines.append(f"{source}:{node.start_mark.line + 1}: {where}: {error['msg']}")
        raise McpConfigError("\n".join(lines)) from None


def load_config(path: Path) -> McpConfig:
    """mcp.yaml from ``path``; no file means no MCP servers."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        return McpConfig()
    except OSError as err:
        raise McpConfigError(f"{path}: cannot read: {err.strerror}") from None
    return parse_config(text, str(path))
