"""Build the anthropic client from settings.

In the mesh a service holds no vendor key: it holds its own credential for the model
gateway (``AGENTMESH_GATEWAY_TOKEN``, a secret file) and ``ANTHROPIC_BASE_URL`` points
at the gateway, which adds the key. Outside the mesh (tests, ``make dev``) the key
comes from a secret file or ``ANTHROPIC_API_KEY`` and the SDK talks to
``ANTHROPIC_BASE_URL`` (any Anthropic-compatible endpoint) directly. Neither
credential is ever logged.
"""

from __future__ import annotations

import time
from typing import Any

import anthropic
import httpx

from agentmesh_shared.http_pools import PerThreadTransport2
from agentmesh_shared.settings import Settings
from agentmesh_shared.turns import TURNS

NOT_CONFIGURED = (
    "the model is not configured: put an Anthropic API key in "
    "secrets/anthropic_api_key (or set ANTHROPIC_API_KEY), or run `make demo` "
    "for the scripted model"
)


class LLMNotConfiguredError(RuntimeError):
    def __init__(self, reason: str = NOT_CONFIGURED) -> None:
        super().__init__(reason)


class _Anthropic(anthropic.Anthropic):
    """The SDK's client; its sleep before a retry gives the caller's CPU turn up."""

    def _sleep_for_retry(self, **kwargs: Any) -> None:
        with TURNS.released():
            super()._sleep_for_retry(**kwargs)


def make_client(settings: Settings) -> anthropic.Anthropic:
    """The SDK's client, with a connection pool per calling thread (see http_pools)."""
    if settings.gateway_token is not None:
        if settings.anthropic_base_url is None:
            msg = "AGENTMESH_GATEWAY_TOKEN is set but ANTHROPIC_BASE_URL (the gateway) is not"
            raise LLMNotConfiguredError(msg)
        key = settings.gateway_token
    elif settings.anthropic_api_key is not None:
        key = settings.anthropic_api_key
    else:
        raise LLMNotConfiguredError
    return _Anthropic(
        api_key=key.get_secret_value(),
        base_url=str(settings.anthropic_base_url).rstrip("/")
        if settings.anthropic_base_url
        else None,
        max_retries=settings.llm_max_retries,
        http_client=anthropic.DefaultHttpxClient(transport=PerThreadTransport2()),
        timeout=settings.llm_timeout_s,
        # The agent loop makes one GenAI span per model call (with the agent's name and
        # the content policy of AGENTMESH_TRACE_CONTENT); the SDK's own call spans would
        # duplicate it and double every token count summed from traces.
        open_telemetry={"traces": {"enabled": False}},
    )


class ModelStatus:
    """Whether the model can be called, asked of the gateway (cached for ``ttl_s``).

    Without a gateway credential the answer is local: is there a key. With one, the
    gateway's ``GET /status`` says whether it holds a vendor key; an unreachable
    gateway counts as "not configured" with the reason.
    """

    def __init__(self, settings: Settings, ttl_s: float = 5.0) -> None:
        self._settings = settings
        self._ttl_s = ttl_s
        self._checked = 0.0
        self._reason: str | None = None

    def problem(self) -> str | None:
        """None when the model is configured, else a sentence naming the fix."""
        settings = self._settings
        if settings.gateway_token is None or settings.anthropic_base_url is None:
            return None if settings.anthropic_api_key is not None else NOT_CONFIGURED
        now = time.monotonic()
        if now - self._checked < self._ttl_s:
            return self._reason
        url = str(settings.anthropic_base_url).rstrip("/") + "/status"
        try:
            body = httpx.get(url, timeout=2.0, trust_env=False).json()
            self._reason = None if body.get("model") == "configured" else str(body.get("model"))
        except (httpx.HTTPError, ValueError, AttributeError) as err:
            self._reason = f"the model gateway is unreachable ({type(err).__name__})"
        self._checked = now
        return self._reason
