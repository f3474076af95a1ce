"""The researcher: a Celery consumer of the ``research`` queue.

Its loop searches and stores shared memory and fetches allowed URLs; what it finds
is stored in memory tagged with the task and subtask ids, so the coder (and later
tasks) can build on it.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import httpx
from agentmesh_shared.agent import Tool
from agentmesh_shared.agent.memory_tools import NoteIds, memory_search_tool, memory_store_tool
from agentmesh_shared.models import Role, SubtaskMessage
from agentmesh_shared.settings import Settings
from agentmesh_shared.worker import WorkerRuntime, run_worker

from agentmesh_researcher.fetch import fetch_client, fetch_url_tool

SYSTEM_PROMPT = """You are a researcher agent in a multi-agent mesh.
Investigate the instruction you are given. First search the shared memory for what
other agents already found. Fetch web pages when they help. Store each useful finding
in shared memory with memory_store (one note per finding, self-contained), then answer
with a concise summary of what you found and stored."""


@dataclass
class ResearchSession:
    tools: Sequence[Tool[Any]]

    def artifacts(self) -> dict[str, Any]:
        return {}

    def close(self) -> None:
        return None


@dataclass
class Researcher:
    role: Role = Role.RESEARCHER
    system_prompt: str = SYSTEM_PROMPT
    _http: httpx.Client | None = None
    _http_lock: threading.Lock = field(default_factory=threading.Lock)

    def http(self, settings: Settings) -> httpx.Client:
        """The process's one fetch client. Made under a lock: a burst of first subtasks
        on many threads at once would otherwise each build one (an SSL context each,
        ~15 ms of CPU) and keep only the last."""
        if self._http is None:
            with self._http_lock:
                if self._http is None:
                    self._http = fetch_client(settings)
        return self._http

    def open_session(self, msg: SubtaskMessage, runtime: WorkerRuntime) -> ResearchSession:
        ids = NoteIds(msg.subtask_id)
        return ResearchSession(
            tools=[
                memory_search_tool(runtime.memory),
                memory_store_tool(runtime.memory, ids, role=self.role.value),
                fetch_url_tool(runtime.settings, self.http(runtime.settings)),
            ]
        )


def main() -> None:
    run_worker(Researcher())


if __name__ == "__main__":
    main()
