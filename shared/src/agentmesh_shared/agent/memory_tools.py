"""The shared-memory tools every worker role offers: search and store notes in Chroma."""

from __future__ import annotations

import itertools
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from opentelemetry.trace import Span, SpanKind
from pydantic import BaseModel, Field

from agentmesh_shared.agent.tools import Tool, ToolContext, ToolError
from agentmesh_shared.memory.client import MemoryClientError, MemoryUnavailableError
from agentmesh_shared.telemetry import tracer

if TYPE_CHECKING:
    from agentmesh_shared.memory import MemoryClient


_tracer = tracer("agentmesh.memory")


@contextmanager
def _memory_call(operation: str, memory: MemoryClient) -> Iterator[Span]:
    """A span around one memory call; errors the model can act on become tool errors.

    Memory down after the client's bounded retries is not one of them: it ends the
    subtask with that reason. The span records whatever escapes.
    """
    with _tracer.start_as_current_span(
        f"{operation} {memory.collection_name}",
        kind=SpanKind.CLIENT,
        attributes={
            "db.system.name": "chromadb",
            "db.operation.name": operation,
            "db.collection.name": memory.collection_name,
            "server.address": memory.url,
        },
    ) as span:
        try:
            yield span
        except MemoryUnavailableError:
            raise
        except MemoryClientError as err:
            raise ToolError(f"memory refused the request: {err}") from err


class MemorySearchInput(BaseModel):
    query: str = Field(min_length=1, max_length=2000, description="what to look for")
    k: int = Field(5, ge=1, le=20, description="how many notes to return")
    this_task_only: bool = Field(False, description="only notes stored for the current task")


class MemoryStoreInput(BaseModel):
    text: str = Field(min_length=1, max_length=20_000, description="the note to remember")
    title: str | None = Field(None, max_length=200)
    source_url: str | None = Field(None, max_length=2000)


def memory_search_tool(memory: MemoryClient) -> Tool[MemorySearchInput]:
    def search(args: MemorySearchInput, ctx: ToolContext) -> str:
        where = {"task_id": ctx.task_id} if args.this_task_only else None
        with _memory_call("query", memory) as span:
            hits = memory.search(args.query, k=args.k, where=where)
            span.set_attribute("db.response.returned_rows", len(hits))
        if not hits:
            return "no notes found"
        return "\n".join(
            f"id={h.id} distance={h.distance:.3f} task={h.metadata.get('task_id', '?')}: {h.text}"
            for h in hits
        )

    return Tool(
        name="memory_search",
        description="Search the mesh's shared memory (notes every agent stored) by meaning.",
        input_model=MemorySearchInput,
        fn=search,
    )


class NoteIds:
    """Note ids derived from the subtask id and the order of stores within it.

    A redelivered subtask stores the same notes under the same ids, so Chroma's
    upsert keeps one copy of each.
    """

    def __init__(self, subtask_id: str) -> None:
        self._subtask_id = subtask_id
        self._counter = itertools.count(1)
        self._lock = threading.Lock()

    def next(self) -> str:
        with self._lock:
            return f"{self._subtask_id}-note-{next(self._counter)}"


def memory_store_tool(memory: MemoryClient, ids: NoteIds, role: str) -> Tool[MemoryStoreInput]:
    def store(args: MemoryStoreInput, ctx: ToolContext) -> str:
        note_id = ids.next()
        metadata: dict[str, Any] = {
            "task_id": ctx.task_id,
            "subtask_id": ctx.subtask_id or "",
            "role": role,
        }
        if args.title:
            metadata["title"] = args.title
        if args.source_url:
            metadata["source_url"] = args.source_url
        with _memory_call("upsert", memory) as span:
            span.set_attribute("agentmesh.memory.note_id", note_id)
            memory.store(note_id, args.text, metadata)
        return f"stored note {note_id}"

    return Tool(
        name="memory_store",
        description="Store a note in the mesh's shared memory so other agents can find it.",
        input_model=MemoryStoreInput,
        fn=store,
    )
