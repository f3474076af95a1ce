"""Structured JSON logs on stdout, one setup for every service.

Every line written inside a span carries its ``trace_id`` and ``span_id``, so a log
line leads to its trace and back. Secrets never reach a log: settings hold them as
``SecretStr`` and nothing formats them.
"""

from __future__ import annotations

import logging
import os
import sys

from pythonjsonlogger.json import JsonFormatter

from agentmesh_shared.telemetry import current_ids


class TraceContextFilter(logging.Filter):
    """Adds the current span's ids to every record written while it is active."""

    def filter(self, record: logging.LogRecord) -> bool:
        ids = current_ids()
        if ids is not None:
            record.trace_id, record.span_id = ids
        return True


def setup_logging(service: str, level: str | None = None) -> None:
    handler = logging.StreamHandler(sys.stdout)
    handler.addFilter(TraceContextFilter())
    handler.setFormatter(
        JsonFormatter(
            "%(asctime)s %(levelname)s %(name)s %(message)s",
            rename_fields={"asctime": "time", "levelname": "level", "name": "logger"},
            static_fields={"service": service},
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level or os.environ.get("AGENTMESH_LOG_LEVEL", "INFO"))
    # Celery's per-task "received"/"succeeded" lines are written outside the task's
    # trace context; the worker writes its own lines inside it instead.
    noisy = ("httpx", "httpx2", "httpcore", "anthropic._base_client", "chromadb", "urllib3")
    for name in (*noisy, "celery.worker.strategy", "celery.app.trace"):
        logging.getLogger(name).setLevel(logging.WARNING)
