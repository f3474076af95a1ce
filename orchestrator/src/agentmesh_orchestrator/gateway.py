"""The model gateway: the one holder of the vendor key.

Agents call the Messages API here with their own per-service credential (the SDK's
``api_key``; one secret file per service) and the task id in ``x-agentmesh-task-id``.
The gateway checks the credential, swaps it for the vendor key and forwards the
request, streaming (SSE) included, to ``AGENTMESH_GATEWAY_UPSTREAM`` (Anthropic
through the egress proxy, the scripted model in demo mode, or a user's own gateway).
It counts calls and tokens per role and per task in Redis, logs one line per call and
makes a span in the caller's trace. Unknown credentials get 401; without a vendor key
every call gets 503 with the fix, and ``GET /status`` says so for readiness.

    python -m agentmesh_orchestrator.gateway
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import sys
import time
from collections.abc import AsyncIterator, Coroutine
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit
from urllib.request import proxy_bypass

import httpx
import redis.asyncio as aioredis
from agentmesh_shared import keys, telemetry
from agentmesh_shared.heap import freeze_startup_heap
from agentmesh_shared.llm.client import NOT_CONFIGURED
from agentmesh_shared.logs import setup_logging
from agentmesh_shared.models import Role
from agentmesh_shared.settings import Settings, secrets_dir, settings_or_exit
from opentelemetry.trace import Span, SpanKind, StatusCode
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from agentmesh_orchestrator.http_serve import serve

log = logging.getLogger("agentmesh.gateway")
_tracer = telemetry.tracer("agentmesh.gateway")

TASK_HEADER = "x-agentmesh-task-id"
MAX_BODY_BYTES = 32 * 1024 * 1024  # the Messages API's own request limit
USAGE_TTL_S = 7 * 24 * 3600
# Roles that call the model, each with a secret file gateway_token_<role>.
CALLERS = ("orchestrator", *(role.value for role in Role))
# Never forwarded upstream: the caller's credential, hop-by-hop and our own headers.
_DROP_REQUEST = frozenset(
    {
        "host",
        "content-length",
        "connection",
        "keep-alive",
        "proxy-authorization",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "x-api-key",
        "authorization",
        "accept-encoding",
        "traceparent",
        "tracestate",
        "baggage",
        TASK_HEADER,
    }
)
_DROP_RESPONSE = frozenset(
    {"content-length", "connection", "keep-alive", "transfer-encoding", "content-encoding"}
)


def _error(status: int, kind: str, message: str) -> JSONResponse:
    """An error in the Messages API's own shape, so the SDK raises the matching class."""
    return JSONResponse({"type": "error", "error": {"type": kind, "message": message}}, status)


def load_credentials(directory: Path | None) -> dict[str, str]:
    """credential -> role, from the secret files ``gateway_token_<role>``."""
    found: dict[str, str] = {}
    if directory is None:
        return found
    for role in CALLERS:
        path = directory / f"gateway_token_{role}"
        if path.is_file():
            token = path.read_text().strip()
            if token:
                found[token] = role
    return found


@dataclass
class Usage:
    """Token counts of one call, from its JSON body or its SSE events."""

    input_tokens: int = 0
    output_tokens: int = 0
    _pending: bytes = b""

    def add_json(self, body: bytes) -> None:
        try:
            usage = json.loads(body).get("usage") or {}
        except (ValueError, AttributeError):
            return
        self.input_tokens = int(usage.get("input_tokens") or 0)
        self.output_tokens = int(usage.get("output_tokens") or 0)

    def add_sse(self, chunk: bytes) -> None:
        """message_start carries the input tokens, message_delta the output so far."""
        lines = (self._pending + chunk).split(b"\n")
        self._pending = lines.pop()
        for line in lines:
            if not line.startswith(b"data:"):
                continue
            try:
                event = json.loads(line[5:])
            except ValueError:
                continue
            if not isinstance(event, dict):
                continue
            if event.get("type") == "message_start":
                usage = (event.get("message") or {}).get("usage") or {}
                self.input_tokens = int(usage.get("input_tokens") or 0)
                self.output_tokens = int(usage.get("output_tokens") or 0)
            elif event.get("type") == "message_delta":
                usage = event.get("usage") or {}
                self.output_tokens = int(usage.get("output_tokens") or self.output_tokens)


@dataclass
class Gateway:
    settings: Settings
    credentials: dict[str, str]
    redis: aioredis.Redis
    client: httpx.AsyncClient
    upstream: str = field(init=False)
    _pending: set[asyncio.Task[None]] = field(init=False, default_factory=set)

    def __post_init__(self) -> None:
        self.upstream = str(self.settings.gateway_upstream).rstrip("/")

    @property
    def vendor_key(self) -> str | None:
        key = self.settings.anthropic_api_key
        return key.get_secret_value() if key is not None else None

    def role_of(self, request: Request) -> str | None:
        presented = request.headers.get("x-api-key") or ""
        bearer = request.headers.get("authorization") or ""
        if not presented and bearer.lower().startswith("bearer "):
            presented = bearer[7:].strip()
        for token, role in self.credentials.items():
            if presented and hmac.compare_digest(presented.encode(), token.encode()):
                return role
        return None

    # -- routes ---------------------------------------------------------------------
    async def healthz(self, _: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def status(self, _: Request) -> Response:
        return JSONResponse(
            {
                "model": "configured" if self.vendor_key else NOT_CONFIGURED,
                "upstream": urlsplit(self.upstream).hostname,
                "callers": sorted(set(self.credentials.values())),
            }
        )

    async def usage(self, request: Request) -> Response:
        if self.role_of(request) is None:
            return _error(401, "authentication_error", "a mesh service credential is required")
        roles = {}
        for role in CALLERS:
            counts = await self.redis.hgetall(keys.gateway_usage(role))
            roles[role] = {k: int(v) for k, v in counts.items()}
        task_id = request.query_params.get("task")
        body: dict[str, Any] = {"roles": roles}
        if task_id:
            counts = await self.redis.hgetall(keys.gateway_task_usage(task_id))
            body["task"] = {k: int(v) for k, v in counts.items()}
        return JSONResponse(body)

    async def forward(self, request: Request) -> Response:
        role = self.role_of(request)
        if role is None:
            log.warning(
                "refused a call with an unknown credential", extra={"path": request.url.path}
            )
            return _error(
                401,
                "authentication_error",
                "unknown credential: mesh services call the model gateway with their own "
                "gateway token (secret gateway_token_<service>), not a vendor key",
            )
        key = self.vendor_key
        if key is None:
            return _error(503, "api_error", NOT_CONFIGURED)
        body = await request.body()
        if len(body) > MAX_BODY_BYTES:
            return _error(413, "request_too_large", f"request body over {MAX_BODY_BYTES} bytes")
        task_id = request.headers.get(TASK_HEADER, "")[:128]
        model = ""
        try:
            parsed = json.loads(body) if body else {}
            model = str(parsed.get("model", "")) if isinstance(parsed, dict) else ""
        except ValueError:
            parsed = None
        parent = telemetry.extract(dict(request.headers))
        span = _tracer.start_span(
            f"gateway {model or request.url.path}",
            context=parent,
            kind=SpanKind.SERVER,
            attributes={
                "agentmesh.task_id": task_id,
                "agentmesh.gateway.caller": role,
                "gen_ai.request.model": model,
                "http.request.method": request.method,
                "url.path": request.url.path,
                "server.address": urlsplit(self.upstream).hostname or "",
            },
        )
        headers = {k: v for k, v in request.headers.items() if k.lower() not in _DROP_REQUEST}
        headers["x-api-key"] = key
        headers["accept-encoding"] = "identity"
        started = time.monotonic()
        try:
            upstream_request = self.client.build_request(
                request.method,
                self.upstream + request.url.path,
                params=request.query_params,
                headers=headers,
                content=body,
            )
            response = await self.client.send(upstream_request, stream=True)
        except httpx.HTTPError as err:
            await self._finish(span, role, task_id, 502, Usage(), started, error=err)
            return _error(502, "api_error", f"the model gateway cannot reach the model: {err!r}")
        out_headers = {k: v for k, v in response.headers.items() if k.lower() not in _DROP_RESPONSE}
        streaming = "text/event-stream" in response.headers.get("content-type", "")
        usage = Usage()

        async def relay() -> AsyncIterator[bytes]:
            whole = bytearray()
            error: BaseException | None = None
            try:
                async for chunk in response.aiter_raw():
                    if streaming:
                        usage.add_sse(chunk)
                    elif len(whole) < MAX_BODY_BYTES:
                        whole.extend(chunk)
                    yield chunk
            except BaseException as err:  # the caller went away, or the upstream did
                error = err
                raise
            finally:
                await response.aclose()
                if not streaming and response.status_code < 400:
                    usage.add_json(bytes(whole))
                # Recorded after the reply, not before its last byte: the caller never
                # waits for the accounting.
                self._later(
                    self._finish(span, role, task_id, response.status_code, usage, started, error)
                )

        return StreamingResponse(relay(), status_code=response.status_code, headers=out_headers)

    def _later(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(work)
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    async def _finish(
        self,
        span: Span,
        role: str,
        task_id: str,
        status: int,
        usage: Usage,
        started: float,
        error: BaseException | None = None,
    ) -> None:
        elapsed_ms = round((time.monotonic() - started) * 1000, 1)
        failed = status >= 400 or error is not None
        span.set_attribute("http.response.status_code", status)
        # Not gen_ai.usage.*: the caller's chat span already carries those, and trace
        # totals sum them.
        span.set_attribute("agentmesh.gateway.input_tokens", usage.input_tokens)
        span.set_attribute("agentmesh.gateway.output_tokens", usage.output_tokens)
        if failed:
            span.set_status(StatusCode.ERROR, f"{status} {type(error).__name__ if error else ''}")
        span.end()
        try:
            pipe = self.redis.pipeline(transaction=False)
            counts = {
                "calls": 1,
                "errors": int(failed),
                "input_tokens": usage.input_tokens,
                "output_tokens": usage.output_tokens,
            }
            for name, value in counts.items():
                pipe.hincrby(keys.gateway_usage(role), name, value)
                if task_id:
                    pipe.hincrby(keys.gateway_task_usage(task_id), f"{role}.{name}", value)
            if task_id:
                pipe.expire(keys.gateway_task_usage(task_id), USAGE_TTL_S)
            await pipe.execute()
        except aioredis.RedisError as err:
            log.warning("usage not recorded: %s", type(err).__name__)
        log.info(
            "model call",
            extra={
                "caller": role,
                "task_id": task_id,
                "status": status,
                "input_tokens": usage.input_tokens,
                "output_tokens": usage.output_tokens,
                "duration_ms": elapsed_ms,
            },
        )


def upstream_client(settings: Settings) -> httpx.AsyncClient:
    """Through the egress proxy unless the upstream is a NO_PROXY host (the scripted model)."""
    host = urlsplit(str(settings.gateway_upstream)).hostname or ""
    proxy = None if proxy_bypass(host) else settings.egress_proxy_url()
    return httpx.AsyncClient(
        proxy=proxy,
        trust_env=False,
        timeout=httpx.Timeout(settings.llm_timeout_s, connect=10.0),
        limits=httpx.Limits(max_connections=1000, max_keepalive_connections=100),
    )


def create_app(gateway: Gateway) -> Starlette:
    @asynccontextmanager
    async def lifespan(_: Starlette) -> AsyncIterator[None]:
        yield
        await asyncio.gather(*gateway._pending)
        await gateway.client.aclose()
        await gateway.redis.aclose()

    return Starlette(
        routes=[
            Route("/healthz", gateway.healthz),
            Route("/status", gateway.status),
            Route("/usage", gateway.usage),
            Route("/v1/messages", gateway.forward, methods=["POST"]),
            Route("/v1/messages/count_tokens", gateway.forward, methods=["POST"]),
        ],
        lifespan=lifespan,
    )


def build(settings: Settings) -> Gateway:
    credentials = load_credentials(secrets_dir())
    return Gateway(
        settings=settings,
        credentials=credentials,
        redis=aioredis.Redis.from_url(settings.redis_connection_url(), decode_responses=True),
        client=upstream_client(settings),
    )


def main() -> None:
    setup_logging("gateway")
    settings = settings_or_exit("gateway")
    gateway = build(settings)
    if not gateway.credentials:
        print(
            "gateway: no caller credentials (secret files gateway_token_<service>): "
            "run scripts/secrets.sh",
            file=sys.stderr,
        )
        raise SystemExit(2)
    telemetry.setup_telemetry("gateway")
    log.info(
        "model gateway listening",
        extra={
            "upstream": urlsplit(gateway.upstream).hostname,
            "model": "configured" if gateway.vendor_key else "not configured",
            "callers": sorted(set(gateway.credentials.values())),
        },
    )
    app = create_app(gateway)
    freeze_startup_heap()
    serve(app, settings.gateway_host, settings.gateway_port)
    telemetry.shutdown_telemetry()


if __name__ == "__main__":
    main()
