"""The coder ↔ sandbox protocol: one typed request and one typed reply per connection.

Frames (``sandbox_wire``) are a 4-byte big-endian length followed by that many bytes
of JSON, over a unix stream socket. Every message names the protocol version; a peer speaking
another version gets a reply that says so instead of a misread request.
"""

from __future__ import annotations

import re
import socket
from pathlib import PurePosixPath
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from agentmesh_coder.sandbox_wire import (
    MAX_FRAME_BYTES,
    PROTOCOL_VERSION,
    ProtocolError,
    recv_bytes,
    send_bytes,
)

__all__ = ["MAX_FRAME_BYTES", "PROTOCOL_VERSION", "ProtocolError"]

MAX_FILES = 50
MAX_FILE_CHARS = 200_000
_TRACEPARENT = re.compile(r"^00-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})$")


def relative_path(path: str) -> str:
    """``path`` if it names a file inside a run's directory, else ``ValueError``."""
    rel = PurePosixPath(path)
    if rel.is_absolute() or not rel.parts or ".." in rel.parts:
        msg = f"{path!r} must be a relative path inside the scratch directory"
        raise ValueError(msg)
    return rel.as_posix()


class _Message(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    version: int = PROTOCOL_VERSION


class PingRequest(_Message):
    op: Literal["ping"] = "ping"


class RunRequest(_Message):
    op: Literal["run"] = "run"
    script: str = Field(min_length=1, max_length=200)
    args: list[str] = Field(default_factory=list, max_length=20)
    stdin: str = Field("", max_length=100_000)
    files: dict[str, str] = Field(default_factory=dict, max_length=MAX_FILES)
    traceparent: str | None = None

    @field_validator("script")
    @classmethod
    def _script_inside(cls, value: str) -> str:
        return relative_path(value)

    @field_validator("files")
    @classmethod
    def _files_inside(cls, value: dict[str, str]) -> dict[str, str]:
        for path, content in value.items():
            relative_path(path)
            if len(content) > MAX_FILE_CHARS:
                msg = f"{path}: more than {MAX_FILE_CHARS} characters"
                raise ValueError(msg)
        return value

    @field_validator("traceparent")
    @classmethod
    def _w3c(cls, value: str | None) -> str | None:
        if value is not None and not _TRACEPARENT.match(value):
            msg = "traceparent must be a W3C trace-context header (00-<trace>-<span>-<flags>)"
            raise ValueError(msg)
        return value

    def trace_ids(self) -> tuple[str, str, int] | None:
        """(trace id, parent span id, flags) from ``traceparent``, if any."""
        match = _TRACEPARENT.match(self.traceparent or "")
        return (match[1], match[2], int(match[3], 16)) if match else None


class RunOutcome(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    exit_code: int | None
    stdout: str
    stderr: str
    duration_s: float
    timed_out: bool
    truncated: bool
    files: dict[str, str] = Field(default_factory=dict)


class SpanRecord(BaseModel):
    """The sandbox's span of one run, recorded there and exported by the coder."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    trace_id: str
    span_id: str
    parent_span_id: str
    trace_flags: int
    name: str
    start_ns: int
    end_ns: int
    attributes: dict[str, str | int | float | bool] = Field(default_factory=dict)
    error: str | None = None


class Reply(_Message):
    ok: bool
    error: str | None = None
    replica: str = ""
    outcome: RunOutcome | None = None
    span: SpanRecord | None = None


Request = PingRequest | RunRequest


def send_frame(sock: socket.socket, message: BaseModel) -> None:
    send_bytes(sock, message.model_dump_json().encode())


def recv_frame(sock: socket.socket) -> bytes:
    return recv_bytes(sock)
