"""``make dev``: the whole mesh as local processes, with the scripted model, until Ctrl-C."""

from __future__ import annotations

import contextlib
import os
import signal
import tempfile
import threading
from pathlib import Path

from tests.support.mesh import local_mesh


def main() -> None:
    root = Path(tempfile.mkdtemp(prefix="agentmesh-dev-"))
    delay = int(os.environ.get("SCRIPTED_LLM_DELAY_MS", "0"))
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    with local_mesh(root, llm_delay_ms=delay) as mesh:
        print(
            f"agentmesh is running as local processes (logs in {root}); the model is SCRIPTED.\n"
            f"  export AGENTMESH_API_URL={mesh.api_url}\n"
            f"  export AGENTMESH_API_TOKEN={mesh.api_token}\n"
            f'  .venv/bin/orchestrator submit "hello" --wait\n'
            "Ctrl-C stops everything.",
            flush=True,
        )
        with contextlib.suppress(KeyboardInterrupt):
            stop.wait()


if __name__ == "__main__":
    main()
