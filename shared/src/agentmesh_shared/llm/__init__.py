"""The LLM client: the official anthropic SDK, configured from settings."""

from agentmesh_shared.llm.client import LLMNotConfiguredError, make_client

__all__ = ["LLMNotConfiguredError", "make_client"]
