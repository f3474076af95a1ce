"""The mesh's metrics, created once per process on the global meter provider.

Names follow OpenTelemetry conventions; ``gen_ai.client.token.usage`` is the GenAI
semantic-convention histogram of tokens per model call.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from functools import cache

from opentelemetry.metrics import CallbackOptions, Counter, Histogram, Observation

from agentmesh_shared.telemetry import meter

_METER = "agentmesh"


@cache
def tasks() -> Counter:
    return meter(_METER).create_counter(
        "agentmesh.tasks", unit="{task}", description="tasks by status"
    )


@cache
def subtasks() -> Counter:
    return meter(_METER).create_counter(
        "agentmesh.subtasks", unit="{subtask}", description="subtasks by role and status"
    )


@cache
def subtask_duration() -> Histogram:
    return meter(_METER).create_histogram(
        "agentmesh.subtask.duration", unit="s", description="subtask wall time by role and status"
    )


@cache
def token_usage() -> Histogram:
    return meter(_METER).create_histogram(
        "gen_ai.client.token.usage", unit="{token}", description="tokens per model call"
    )


@cache
def tokens() -> Counter:
    return meter(_METER).create_counter(
        "agentmesh.tokens", unit="{token}", description="tokens used by model, role and type"
    )


def observe(
    name: str,
    unit: str,
    description: str,
    read: Callable[[], Iterable[tuple[float, dict[str, str]]]],
) -> None:
    """Register an observable gauge whose callback yields (value, attributes) pairs."""

    def callback(_: CallbackOptions) -> Iterable[Observation]:
        return [Observation(value, attrs) for value, attrs in read()]

    meter(_METER).create_observable_gauge(
        name, callbacks=[callback], unit=unit, description=description
    )


def record_tokens(model: str, role: str, input_tokens: int, output_tokens: int) -> None:
    for kind, count in (("input", input_tokens), ("output", output_tokens)):
        attrs = {"gen_ai.request.model": model, "gen_ai.token.type": kind, "agentmesh.role": role}
        token_usage().record(count, attrs)
        tokens().add(count, attrs)
