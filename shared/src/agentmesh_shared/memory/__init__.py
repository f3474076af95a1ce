"""Shared agent memory: the client of the memory service's narrow API.

The embedding model and the Chroma client live in the memory service
(``agentmesh_orchestrator.memory_gate``), not in the agents.
"""

from agentmesh_shared.memory.client import (
    DEFAULT_COLLECTION,
    MemoryAuthError,
    MemoryClient,
    MemoryClientError,
    MemoryHit,
    MemoryUnavailableError,
    MetadataValue,
)

__all__ = [
    "DEFAULT_COLLECTION",
    "MemoryAuthError",
    "MemoryClient",
    "MemoryClientError",
    "MemoryHit",
    "MemoryUnavailableError",
    "MetadataValue",
]
