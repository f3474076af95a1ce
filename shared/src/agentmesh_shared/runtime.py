"""What one worker process knows while it runs subtasks: its role, its loops, their leases.

A role (researcher, coder) supplies a :class:`RoleAgent`: its system prompt and the
tools of one subtask. :class:`WorkerRuntime` holds the process's connections and the
subtasks it runs now; the heartbeat renews their leases through the hand-off and asks
:meth:`WorkerRuntime.check_stalls` whether any loop stopped making progress.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import TYPE_CHECKING, Any, Protocol

from agentmesh_shared.handoff import Handoff
from agentmesh_shared.llm import LLMNotConfiguredError, make_client
from agentmesh_shared.mcp import McpHub, load_config, mcp_tools
from agentmesh_shared.models import Role, SubtaskMessage, WorkerInfo
from agentmesh_shared.redisconn import connect
from agentmesh_shared.settings import Settings

if TYPE_CHECKING:
    import anthropic
    import redis

    from agentmesh_shared.agent import AgentTool
    from agentmesh_shared.memory import MemoryClient


class RoleSession(Protocol):
    """The tools of one subtask, and what it produced besides its final text."""

    @property
    def tools(self) -> Sequence[AgentTool]: ...

    def artifacts(self) -> dict[str, Any]: ...

    def close(self) -> None: ...


class RoleAgent(Protocol):
    role: Role
    system_prompt: str

    def open_session(self, msg: SubtaskMessage, runtime: WorkerRuntime) -> RoleSession: ...


@dataclass
class ActiveSubtask:
    msg: SubtaskMessage
    started: float
    last_progress: float
    abandoned_at: float | None = None


@dataclass
class WorkerRuntime:
    settings: Settings
    role: Role
    hostname: str = ""
    started_at: float = field(default_factory=time.time)
    processed: int = 0
    active: dict[str, ActiveSubtask] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self) -> None:
        self.hostname = self.hostname or self.settings.worker_hostname

    @cached_property
    def redis(self) -> redis.Redis:
        return connect(self.settings, max_connections=self.settings.worker_concurrency + 8)

    @cached_property
    def handoff(self) -> Handoff:
        return Handoff(self.redis)

    @cached_property
    def llm(self) -> anthropic.Anthropic:
        return make_client(self.settings)

    @cached_property
    def memory(self) -> MemoryClient:
        from agentmesh_shared.memory import MemoryClient  # noqa: PLC0415 - heavy, needed by roles that use it

        token = self.settings.chroma_token
        return MemoryClient(
            str(self.settings.chroma_url),
            self.settings.memory_collection,
            token=token.get_secret_value() if token else None,
        )

    @cached_property
    def mcp(self) -> McpHub:
        """Connections to the MCP servers granted to this role (mcp.yaml)."""
        config = load_config(self.settings.mcp_config)
        return McpHub(
            config.for_role(self.role),
            connect_timeout_s=self.settings.mcp_connect_timeout_s,
            call_timeout_s=self.settings.mcp_call_timeout_s,
        )

    def warm_up(self) -> None:
        """Make the model client before the first subtask, not during it.

        Building it imports the SDK's HTTP stack (~0.5 s of CPU once per process); made
        lazily, that landed on the first burst of subtasks a new replica took, and
        every one of them waited for it. Without a configured model nothing is made:
        each subtask then fails with the reason, as before.
        """
        with contextlib.suppress(LLMNotConfiguredError):
            _ = self.llm

    def mcp_tools(self) -> list[AgentTool]:
        """The MCP tools a subtask of this role is offered."""
        return list(
            mcp_tools(
                self.mcp,
                max_chars=self.settings.mcp_result_max_chars,
                call_timeout_s=self.settings.mcp_call_timeout_s,
            )
        )

    def info(self) -> WorkerInfo:
        return WorkerInfo(
            hostname=self.hostname,
            role=self.role,
            pid=os.getpid(),
            concurrency=self.settings.worker_concurrency,
            in_flight=self.in_flight,
            processed=self.processed,
            started_at=self.started_at,
            last_seen=time.time(),
            mcp=self.mcp.status(),
        )

    @property
    def in_flight(self) -> int:
        return len(self.active)

    @property
    def lease_ttl_s(self) -> float:
        return max(15.0, self.settings.heartbeat_interval_s * 3)

    def enter(self, msg: SubtaskMessage) -> None:
        now = time.time()
        with self._lock:
            self.active[msg.subtask_id] = ActiveSubtask(msg=msg, started=now, last_progress=now)

    def leave(self, msg: SubtaskMessage) -> None:
        with self._lock:
            self.active.pop(msg.subtask_id, None)
            self.processed += 1

    def progress(self, subtask_id: str) -> None:
        entry = self.active.get(subtask_id)
        if entry is not None:
            entry.last_progress = time.time()

    def renew_leases(self) -> None:
        """Tell the planner this worker still runs each of its subtasks."""
        with self._lock:
            live = [a.msg.subtask_id for a in self.active.values() if a.abandoned_at is None]
        if live:
            self.handoff.renew(live, self.hostname, self.lease_ttl_s)

    def check_stalls(self, fail: Callable[[ActiveSubtask, str], None]) -> bool:
        """Fail subtasks whose loop made no progress; False when the process is wedged.

        A stalled loop's subtask is failed at once through ``fail`` (its thread cannot
        be interrupted). If that thread is still stuck a second stall period later,
        the process is wedged: the caller exits so the container's restart policy
        brings it back, and the leases of its other subtasks lapse so the planner
        sends them again.
        """
        limit = self.settings.stall_timeout_s
        now = time.time()
        with self._lock:
            entries = list(self.active.values())
        healthy = True
        for entry in entries:
            idle = now - entry.last_progress
            if entry.abandoned_at is None and idle > limit:
                entry.abandoned_at = now
                fail(
                    entry,
                    f"stalled: no progress for {idle:.0f}s on {self.hostname} (limit {limit:.0f}s)",
                )
            elif entry.abandoned_at is not None and now - entry.abandoned_at > limit:
                healthy = False
        return healthy
