"""The LLM client: the official anthropic SDK, configured from settings."""

from agentmesh_shared.llm.client import LLMNotConfiguredError, ModelStatus, make_client

__all__ = ["LLMNotConfiguredError", "ModelStatus", "make_client"]
