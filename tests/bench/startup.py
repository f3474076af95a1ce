"""`make up` to healthy: the mesh from no containers to every container healthy.

The images are built already (that is `make images`, timed by its own log); this is
what a user waits for on every `make up`: `compose up -d` on an empty project (no
containers, no volumes), then until scripts/wait-healthy.sh sees every container
healthy, then until the API accepts a task and the task succeeds. Runs as the e2e
tier's compose project (AGENTMESH_E2E_PROJECT) on a free port, with the scripted
model, and is always torn down.

    uv run python -m tests.bench.startup
"""

from __future__ import annotations

import json
import subprocess
import time
from typing import Any

from tests.e2e.conftest import ROOT, ComposeMesh, _write_env
from tests.support.chroma_server import free_port


def bench_startup(runs: int = 1) -> dict[str, Any]:
    subprocess.run([str(ROOT / "scripts" / "secrets.sh")], check=True, cwd=ROOT)
    env_file = ROOT / "build" / "bench-startup.env"
    mesh = ComposeMesh(env_file=env_file, api_port=free_port())
    _write_env(env_file, mesh.api_port)
    healthy, first_task = [], []
    try:
        for _ in range(runs):
            mesh.compose("down", "--remove-orphans", "--volumes", check=False)
            start = time.monotonic()
            mesh.compose("up", "-d", "--remove-orphans")
            mesh.wait_healthy(timeout=300)
            healthy.append(time.monotonic() - start)
            submitted = mesh.cli("submit", "startup probe", "--wait", "--json")
            if submitted.returncode != 0:
                raise RuntimeError(
                    f"the first task failed:\n{submitted.stdout}\n{submitted.stderr}"
                )
            first_task.append(time.monotonic() - start)
    finally:
        mesh.compose("down", "--remove-orphans", "--volumes", check=False)
        env_file.unlink(missing_ok=True)
    return {
        "runs": runs,
        "up_to_healthy_s": [round(s, 1) for s in healthy],
        "up_to_first_task_succeeded_s": [round(s, 1) for s in first_task],
    }


def main() -> None:
    print(json.dumps(bench_startup(), indent=2))


if __name__ == "__main__":
    main()
