"""One way to serve the image's HTTP services (the API, the model gateway, the memory gate).

Their clients keep connections open between requests: the egress proxy in front of
the published API port (Squid, whose idle server connections last ``pconn_timeout``,
60 s, in docker/egress/squid-start.sh) and the agents' pooled httpx clients (idle
connections kept 5 s). A server that closes an idle connection first races a client
that is reusing it at that moment, and a request with a body (a task's POST, a
memory store) then fails on the wire: neither Squid nor httpx can send it again.
So the servers keep idle connections longer than any of their clients does.
"""

from __future__ import annotations

import uvicorn
from starlette.types import ASGIApp

KEEP_ALIVE_S = 75
"""Idle keep-alive of the servers: longer than every client's (Squid 60 s, httpx 5 s)."""


def serve(app: ASGIApp, host: str, port: int) -> None:
    """Run ``app`` until SIGTERM or SIGINT; logging is the service's own (JSON lines)."""
    uvicorn.run(
        app,
        host=host,
        port=port,
        log_config=None,
        access_log=False,
        timeout_graceful_shutdown=10,
        timeout_keep_alive=KEEP_ALIVE_S,
    )
