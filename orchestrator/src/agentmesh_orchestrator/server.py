"""``orchestrator serve``: the API server and the planner in one process."""

from __future__ import annotations

import sys

import uvicorn
from agentmesh_shared import metrics
from agentmesh_shared.logs import setup_logging
from agentmesh_shared.models import Role
from agentmesh_shared.settings import SettingsError, load_settings
from agentmesh_shared.telemetry import setup_telemetry, shutdown_telemetry

from agentmesh_orchestrator.api import create_app
from agentmesh_orchestrator.service import Services


def run() -> None:
    setup_logging("orchestrator")
    try:
        settings = load_settings()
    except SettingsError as err:
        print(f"orchestrator: {err}", file=sys.stderr)
        raise SystemExit(2) from None
    setup_telemetry("orchestrator")
    services = Services.build(settings)
    queues = [role.queue for role in Role]
    metrics.observe(
        "agentmesh.queue.depth",
        "{message}",
        "messages waiting in each worker queue",
        lambda: [(int(services.redis.llen(q)), {"messaging.destination.name": q}) for q in queues],
    )
    app = create_app(services)
    uvicorn.run(
        app,
        host=settings.api_host,
        port=settings.api_port,
        log_config=None,
        access_log=False,
        timeout_graceful_shutdown=10,
    )
    shutdown_telemetry()
