"""Structured JSON logs on stdout, one setup for every service."""

from __future__ import annotations

import logging
import os
import sys

from pythonjsonlogger.json import JsonFormatter


def setup_logging(service: str, level: str | None = None) -> None:
    handler = logging.StreamHandler(sys.stdout)
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
    for noisy in ("httpx", "httpcore", "anthropic._base_client", "chromadb", "urllib3"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
