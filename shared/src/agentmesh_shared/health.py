"""Worker liveness: a heartbeat file the container's HEALTHCHECK reads.

The worker's heartbeat thread touches the file only after a successful broker PING,
so a fresh file means both "the process is not wedged" and "the broker is reachable".
Its later lines are notes that do not make the worker unhealthy (an MCP tool server
that is not connected: its tool calls fail with a clear error, the rest works).
``python -m agentmesh_shared.health [PATH] [MAX_AGE_S]`` exits 0 when it is fresh.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

DEFAULT_PATH = Path(os.environ.get("AGENTMESH_HEARTBEAT_FILE", "/tmp/agentmesh-heartbeat"))  # noqa: S108
DEFAULT_MAX_AGE_S = 30.0


def beat(path: Path, notes: list[str] | None = None) -> None:
    """Touch the heartbeat; ``notes`` (e.g. an MCP server not connected) are shown by main."""
    tmp = path.with_suffix(".tmp")
    tmp.write_text("\n".join([str(time.time()), *(notes or [])]))
    tmp.replace(path)


def notes(path: Path) -> list[str]:
    try:
        return path.read_text().splitlines()[1:]
    except OSError:
        return []


def age(path: Path) -> float | None:
    try:
        return time.time() - path.stat().st_mtime
    except FileNotFoundError:
        return None


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    path = Path(args[0]) if args else DEFAULT_PATH
    max_age = float(args[1]) if len(args) > 1 else DEFAULT_MAX_AGE_S
    current = age(path)
    if current is None:
        print(f"unhealthy: no heartbeat at {path}")
        return 1
    if current > max_age:
        print(f"unhealthy: last heartbeat {current:.0f}s ago (limit {max_age:.0f}s)")
        return 1
    print(f"healthy: last heartbeat {current:.1f}s ago")
    for note in notes(path):
        print(note)
    return 0


if __name__ == "__main__":
    sys.exit(main())
