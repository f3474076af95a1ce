"""Every message that crosses a process boundary, as versioned pydantic models.

``SCHEMA_VERSION`` is carried by every broker payload and stored record; a consumer
refuses a version it does not know instead of guessing at its fields.
"""

from __future__ import annotations

import time
import uuid
from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, StringConstraints

SCHEMA_VERSION: Literal[1] = 1

Identifier = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_.:-]{1,128}$")]


def new_id() -> str:
    return uuid.uuid4().hex


def now() -> float:
    return time.time()


class Role(StrEnum):
    RESEARCHER = "researcher"
    CODER = "coder"

    @property
    def queue(self) -> str:
        return QUEUE_BY_ROLE[self]


QUEUE_BY_ROLE: dict[Role, str] = {Role.RESEARCHER: "research", Role.CODER: "code"}
TASK_NAME_BY_ROLE: dict[Role, str] = {
    Role.RESEARCHER: "agentmesh.research",
    Role.CODER: "agentmesh.code",
}


class TaskStatus(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def terminal(self) -> bool:
        return self in {TaskStatus.SUCCEEDED, TaskStatus.FAILED, TaskStatus.CANCELLED}


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=False)


class Usage(Strict):
    input_tokens: int = Field(0, ge=0)
    output_tokens: int = Field(0, ge=0)

    @property
    def total(self) -> int:
        return self.input_tokens + self.output_tokens

    def __add__(self, other: Usage) -> Usage:
        return Usage(
            input_tokens=self.input_tokens + other.input_tokens,
            output_tokens=self.output_tokens + other.output_tokens,
        )


class TaskLimits(Strict):
    max_steps: int = Field(gt=0, le=1000)
    token_budget: int = Field(gt=0, le=100_000_000)
    timeout_s: float = Field(gt=0, le=86_400)


def _strip(value: object) -> object:
    return value.strip() if isinstance(value, str) else value


class TaskRequest(Strict):
    """What a client submits. Limits left out take the configured defaults."""

    text: Annotated[str, BeforeValidator(_strip), StringConstraints(min_length=1)]
    max_steps: int | None = Field(None, gt=0, le=1000)
    token_budget: int | None = Field(None, gt=0, le=100_000_000)
    timeout_s: float | None = Field(None, gt=0, le=86_400)


class SubtaskMessage(Strict):
    """The broker payload of one delegated subtask (Celery task argument)."""

    schema_version: Literal[1] = SCHEMA_VERSION
    task_id: Identifier
    subtask_id: Identifier
    role: Role
    instruction: Annotated[str, StringConstraints(min_length=1, max_length=100_000)]
    max_steps: int = Field(gt=0, le=1000)
    deadline: float = Field(description="unix time after which the subtask must stop")


class SubtaskResult(Strict):
    """What a worker reports for one subtask; written once per subtask id."""

    schema_version: Literal[1] = SCHEMA_VERSION
    task_id: Identifier
    subtask_id: Identifier
    role: Role
    status: Literal["succeeded", "failed"]
    worker: str
    output: str = ""
    error: str | None = None
    usage: Usage = Field(default_factory=Usage)
    steps: int = 0
    artifacts: dict[str, Any] = Field(default_factory=dict)
    started_at: float
    finished_at: float


class SubtaskRecord(Strict):
    id: Identifier
    role: Role
    instruction: str
    status: TaskStatus = TaskStatus.QUEUED
    worker: str | None = None
    result: str | None = None
    error: str | None = None
    usage: Usage = Field(default_factory=Usage)
    steps: int = 0
    artifacts: dict[str, Any] = Field(default_factory=dict)
    created_at: float = Field(default_factory=now)
    dispatched_at: float | None = None
    started_at: float | None = None
    finished_at: float | None = None
    resends: int = 0  # sent again after its worker stopped renewing its lease


class TaskRecord(Strict):
    """The durable record of one task, as stored in Redis and returned by the API."""

    schema_version: Literal[1] = SCHEMA_VERSION
    id: Identifier
    text: str
    status: TaskStatus = TaskStatus.QUEUED
    result: str | None = None
    error: str | None = None
    subtasks: list[SubtaskRecord] = Field(default_factory=list)
    usage: Usage = Field(default_factory=Usage)
    steps: int = 0
    limits: TaskLimits
    trace_id: str | None = None
    traceparent: str | None = None
    created_at: float = Field(default_factory=now)
    updated_at: float = Field(default_factory=now)
    finished_at: float | None = None


class TaskEvent(Strict):
    """One line of a task's progress, streamed by ``submit --follow``."""

    id: str = ""
    task_id: Identifier
    at: float = Field(default_factory=now)
    kind: str
    message: str
    data: dict[str, Any] = Field(default_factory=dict)


class WorkerInfo(Strict):
    hostname: str
    role: Role
    pid: int
    concurrency: int
    in_flight: int
    processed: int
    started_at: float
    last_seen: float
    # Per MCP server granted to the role: "connected" or "not connected: <reason>".
    mcp: dict[str, str] = Field(default_factory=dict)
