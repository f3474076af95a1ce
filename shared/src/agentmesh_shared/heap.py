"""A service's start-up heap, out of the cyclic garbage collector's reach.

Each service builds most of its objects once, at start: every imported module's
functions and classes, the SDK's and pydantic's schemas, Celery's app, the
embedding model's tokenizer. CPython's collector walks all of them again at every
full (oldest-generation) collection; in a busy worker those took ~0.25 s of CPU
in a batch of 100 tasks, holding the GIL, so every loop of the process stood still
meanwhile. ``gc.freeze`` moves the objects alive now into a permanent
generation that collections skip: what the service allocates afterwards is
collected as before, the start-up objects are still freed by reference counting,
and only reference cycles among them that become garbage later stay in memory.
Each service calls :func:`freeze_startup_heap` once, when it is ready to work.
"""

from __future__ import annotations

import gc
import logging

log = logging.getLogger("agentmesh.heap")


def freeze_startup_heap() -> int:
    """Collect what start-up left as garbage, then freeze every object alive now;
    how many objects the permanent generation holds."""
    gc.collect()
    gc.freeze()
    frozen = gc.get_freeze_count()
    log.debug("froze %d start-up objects out of the collector's reach", frozen)
    return frozen
