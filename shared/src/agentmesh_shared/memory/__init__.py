"""Shared agent memory: offline MiniLM embeddings and a Chroma client.

Every embedding here is one short text, asked for by one of many agent threads at
once. OpenBLAS would otherwise start a thread per core for each of those tiny
matrix products and spin them against each other: on two busy cores one query took
145 ms instead of 9 ms, and every loop waiting on memory waited that long. One BLAS
thread per call is the default, set here before this package loads numpy (an
explicit ``OPENBLAS_NUM_THREADS`` wins).
"""

import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

# isort: split

from agentmesh_shared.memory.client import (
    DEFAULT_COLLECTION,
    MemoryAuthError,
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
    "MemoryAuthError",
    "MemoryClient",
    "MemoryClientError",
    "MemoryHit",
    "MemoryUnavailableError",
    "MetadataValue",
    "MiniLMEmbedder",
    "default_model_dir",
    "get_embedder",
]
