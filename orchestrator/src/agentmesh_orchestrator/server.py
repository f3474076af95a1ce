"""``orchestrator serve`` (the API, and planning steps) and ``orchestrator plan`` (planning only)."""

from __future__ import annotations

import logging
import signal
import threading

from agentmesh_shared import metrics
from agentmesh_shared.health import beat
from agentmesh_shared.heap import freeze_startup_heap
from agentmesh_shared.logs import setup_logging
from agentmesh_shared.models import Role
from agentmesh_shared.settings import settings_or_exit
from agentmesh_shared.telemetry import setup_telemetry, shutdown_telemetry

from agentmesh_orchestrator.api import create_app
from agentmesh_orchestrator.http_serve import serve
from agentmesh_orchestrator.service import Services


def _services() -> Services:
    setup_logging("orchestrator")
    settings = settings_or_exit("orchestrator")
    setup_telemetry("orchestrator", instance=settings.worker_hostname)
    return Services.build(settings)


def run_planner() -> None:
    """A planning replica without the API: claims steps until SIGTERM or SIGINT."""
    services = _services()
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    services.planner.start()
    freeze_startup_heap()
    beat(services.settings.heartbeat_file)
    while not stop.wait(services.settings.heartbeat_interval_s):
        try:
            services.redis.ping()
            beat(services.settings.heartbeat_file)
        except Exception:
            logging.getLogger("agentmesh.planner").exception("broker unreachable")
    services.planner.shutdown()
    shutdown_telemetry()


def run() -> None:
    services = _services()
    settings = services.settings
    queues = [role.queue for role in Role]
    metrics.observe(
        "agentmesh.queue.depth",
        "{message}",
        "messages waiting in each worker queue",
        lambda: [(int(services.redis.llen(q)), {"messaging.destination.name": q}) for q in queues],
    )
    app = create_app(services)
    serve(app, settings.api_host, settings.api_port)
    shutdown_telemetry()
