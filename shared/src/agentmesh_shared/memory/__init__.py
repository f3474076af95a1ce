"""Shared agent memory: offline MiniLM embeddings and a Chroma client."""

from agentmesh_shared.memory.client import (
    DEFAULT_COLLECTION,
    MemoryClient,
    MemoryClientError,
    MemoryHit,
    MemoryUnavailableError,
    MetadataValue,
)
from agentmesh_shared.memory.embedding import (
    EMBEDDING_DIM,
    MAX_SEQ_LENGTH,
    MiniLMEmbedder,
    default_model_dir,
    get_embedder,
)

__all__ = [
    "DEFAULT_COLLECTION",
    "EMBEDDING_DIM",
    "MAX_SEQ_LENGTH",
    "MemoryClient",
    "MemoryClientError",
    "MemoryHit",
    "MemoryUnavailableError",
    "MetadataValue",
    "MiniLMEmbedder",
    "default_model_dir",
    "get_embedder",
]
