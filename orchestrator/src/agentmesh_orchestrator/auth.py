"""Bearer-token authentication of the orchestrator API.

Every request but the open probes (``/healthz``, ``/readyz``) and the dashboard's
static files (``/``, ``/ui/...``, no data in them) must carry
``Authorization: Bearer <token>`` with a token of the ``api_token`` secret
(``AGENTMESH_API_TOKEN``): one token per line, each a credential of its own (one per
client or team, so flood limits and audit lines tell them apart); anything else gets a 401 with a sentence saying what to
send and a ``WWW-Authenticate: Bearer`` challenge. Tokens are compared in constant
time. The middleware is plain ASGI (no per-request task or copy of the body).

:func:`caller_identity` names the credential a request was authenticated with: a
stable, non-secret id derived from the token (``token:<12 hex>``), the key for
anything kept per caller (rate limits, audit lines).
"""

from __future__ import annotations

import hashlib
import hmac
import json

from starlette.requests import Request
from starlette.types import ASGIApp, Receive, Scope, Send

OPEN_PATHS = frozenset({"/healthz", "/readyz", "/", "/ui"})
# The dashboard's static files (HTML, CSS, scripts): a browser loads them without a
# header; they hold no data (what the page shows, it reads with the token).
OPEN_PREFIXES = ("/ui/",)
REALM = "agentmesh"
UNAUTHORIZED = (
    "missing or wrong API token: send 'Authorization: Bearer <token>' with the token in "
    "secrets/api_token (the orchestrator CLI reads it from there, from AGENTMESH_API_TOKEN "
    "or from --token-file)"
)


class TokenNotConfiguredError(RuntimeError):
    """The API was started without a token; it refuses to serve unauthenticated."""


def credential_id(token: str) -> str:
    """The non-secret id of a credential: ``token:`` and 12 hex digits of its SHA-256."""
    return "token:" + hashlib.sha256(token.encode()).hexdigest()[:12]


def parse_tokens(value: str) -> list[str]:
    """The tokens of an ``api_token`` secret: one per line; blank lines and ``#``
    comments are ignored."""
    lines = (line.strip() for line in value.splitlines())
    return [line for line in lines if line and not line.startswith("#")]


def caller_identity(request: Request) -> str | None:
    """The credential id the request was authenticated with (``None`` on open paths
    called without a valid token)."""
    identity = request.scope.get("state", {}).get("identity")
    return identity if isinstance(identity, str) else None


def is_open(path: str) -> bool:
    """Paths served without a token: the probes and the dashboard's static files."""
    return path in OPEN_PATHS or path.startswith(OPEN_PREFIXES)


def _bearer(scope: Scope) -> bytes | None:
    for name, value in scope.get("headers", ()):
        if name == b"authorization":
            scheme, _, credentials = value.partition(b" ")
            if scheme.lower() == b"bearer" and credentials.strip():
                return bytes(credentials.strip())
            return None
    return None


class BearerAuthMiddleware:
    """Checks the bearer token of every HTTP request before the app sees it."""

    def __init__(self, app: ASGIApp, *, token: str) -> None:
        tokens = parse_tokens(token)
        if not tokens:
            raise TokenNotConfiguredError(
                "the API token is not set: run scripts/secrets.sh (make up does) to create "
                "secrets/api_token, or set AGENTMESH_API_TOKEN"
            )
        self.app = app
        self._tokens = [(t.encode(), credential_id(t)) for t in tokens]

    def authenticate(self, scope: Scope) -> str | None:
        presented = _bearer(scope)
        if presented is None:
            return None
        found = None
        for token, identity in self._tokens:  # every one compared: no early exit
            if hmac.compare_digest(presented, token):
                found = identity
        return found

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        identity = self.authenticate(scope)
        scope.setdefault("state", {})["identity"] = identity
        if identity is None and not is_open(scope["path"]):
            body = json.dumps({"detail": UNAUTHORIZED}).encode()
            await send(
                {
                    "type": "http.response.start",
                    "status": 401,
                    "headers": [
                        (b"content-type", b"application/json"),
                        (b"content-length", str(len(body)).encode()),
                        (b"www-authenticate", f'Bearer realm="{REALM}"'.encode()),
                    ],
                }
            )
            await send({"type": "http.response.body", "body": body})
            return
        await self.app(scope, receive, send)
