"""Build the anthropic client from settings.

The key comes from a Docker secret file or ``ANTHROPIC_API_KEY`` and is never logged;
``ANTHROPIC_BASE_URL`` points the SDK at any Anthropic-compatible endpoint (the
scripted Messages-API server in tests and in the demo).
"""

from __future__ import annotations

import anthropic

from agentmesh_shared.settings import Settings


class LLMNotConfiguredError(RuntimeError):
    def __init__(self) -> None:
        super().__init__(
            "the model is not configured: put an Anthropic API key in "
            "secrets/anthropic_api_key (or set ANTHROPIC_API_KEY), or run `make demo` "
            "for the scripted model"
        )


def make_client(settings: Settings) -> anthropic.Anthropic:
    """The SDK's own pool allows 1000 connections, enough for any worker's concurrency."""
    if settings.anthropic_api_key is None:
        raise LLMNotConfiguredError
    return anthropic.Anthropic(
        api_key=settings.anthropic_api_key.get_secret_value(),
        base_url=str(settings.anthropic_base_url).rstrip("/")
        if settings.anthropic_base_url
        else None,
        max_retries=settings.llm_max_retries,
        timeout=settings.llm_timeout_s,
        # The agent loop makes one GenAI span per model call (with the agent's name and
        # the content policy of AGENTMESH_TRACE_CONTENT); the SDK's own call spans would
        # duplicate it and double every token count summed from traces.
        open_telemetry={"traces": {"enabled": False}},
    )
