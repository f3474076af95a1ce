"""A small typed client of the orchestrator API, used by the CLI."""

from __future__ import annotations

from typing import Any

import httpx
from agentmesh_shared import telemetry


class ApiError(Exception):
    """The API answered with an error, or could not be reached; ``exit_code`` says which."""

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code


EXIT_UNREACHABLE = 3
EXIT_NOT_FOUND = 4
EXIT_INVALID = 2
EXIT_UNAVAILABLE = 5


class ApiClient:
    def __init__(self, base_url: str, timeout: float = 40.0) -> None:
        self.base_url = base_url.rstrip("/")
        self._http = httpx.Client(base_url=self.base_url, timeout=timeout)

    def request(self, method: str, path: str, **kwargs: Any) -> Any:
        headers = telemetry.inject(kwargs.pop("headers", None))
        try:
            response = self._http.request(method, path, headers=headers, **kwargs)
        except httpx.TransportError as err:
            raise ApiError(
                f"cannot reach the orchestrator API at {self.base_url} ({type(err).__name__}: {err}). "
                "Is the mesh up? Start it with `make up`, or point AGENTMESH_API_URL at it.",
                EXIT_UNREACHABLE,
            ) from err
        if response.is_success:
            return response.json()
        try:
            detail = response.json().get("detail", response.text)
        except ValueError:
            detail = response.text
        code = {
            404: EXIT_NOT_FOUND,
            422: EXIT_INVALID,
            409: EXIT_INVALID,
            503: EXIT_UNAVAILABLE,
        }.get(response.status_code, 1)
        raise ApiError(str(detail), code)

    def submit(self, body: dict[str, Any], idempotency_key: str | None = None) -> dict[str, Any]:
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else {}
        result: dict[str, Any] = self.request("POST", "/tasks", json=body, headers=headers)
        return result

    def get(self, task_id: str) -> dict[str, Any]:
        result: dict[str, Any] = self.request("GET", f"/tasks/{task_id}")
        return result

    def events(self, task_id: str, after: str, wait: float) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = self.request(
            "GET", f"/tasks/{task_id}/events", params={"after": after, "wait": wait}
        )
        return result
