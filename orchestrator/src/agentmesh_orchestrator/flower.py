"""``python -m agentmesh_orchestrator.flower``: Celery's Flower dashboard on the mesh's broker.

Flower runs on the mesh's own Celery app (``create_celery_app``), so it watches the
same broker and queues as the workers, with the broker password read from the
``redis_password`` secret by the settings: the password is never on a command line
or in the environment. Flower asks the workers to send task events while it runs.

Every page but ``/healthcheck`` asks for basic auth with the ``user:password`` of the
``flower_basic_auth`` secret (``AGENTMESH_FLOWER_BASIC_AUTH``); it is handed to Flower
in-process, so it is not on a command line either. Without it Flower does not start.

Other arguments are passed on to ``celery flower``;
``FLOWER_ADDRESS`` / ``FLOWER_PORT`` (default 0.0.0.0:5555) say where it listens.
Flower is an optional dependency of the orchestrator image: this exits with a
message naming the fix when it is not installed.
"""

from __future__ import annotations

import importlib.util
import os
import sys

from agentmesh_shared.celery_app import create_celery_app
from agentmesh_shared.settings import settings_or_exit


def main(argv: list[str] | None = None) -> int:
    if importlib.util.find_spec("flower") is None:
        print("flower: the flower package is not installed in this image", file=sys.stderr)
        return 2
    settings = settings_or_exit("flower")
    credentials = settings.flower_basic_auth
    if credentials is None or ":" not in credentials.get_secret_value():
        print(
            "flower: basic auth is not configured: put user:password in "
            "secrets/flower_basic_auth (scripts/secrets.sh creates it)",
            file=sys.stderr,
        )
        return 2
    app = create_celery_app(settings, name="agentmesh-flower")
    args = [
        "flower",
        f"--basic-auth={credentials.get_secret_value()}",
        f"--address={os.environ.get('FLOWER_ADDRESS', '0.0.0.0')}",  # noqa: S104 - in its container
        f"--port={os.environ.get('FLOWER_PORT', '5555')}",
        *(sys.argv[1:] if argv is None else argv),
    ]
    app.start(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
