"""A small typed client of the orchestrator API, used by the CLI.

It tells the ways a request can go wrong apart: nothing listens (unreachable, exit 3),
the API took the connection but did not answer in time (slow, exit 6), or it said
"too many requests" (429 from a flood limit: the client waits the ``Retry-After`` it
was given and tries again, for up to ``busy_wait_s`` in all; then exit 6; 429 from the
admission limit: exit 6 at once, the mesh is full).

The API's bearer token (a refused one: exit 7) comes from, in order: an explicit
token file (the CLI's ``--token-file``), ``AGENTMESH_API_TOKEN``, the ``api_token`` secret
(``/run/secrets/api_token`` in the orchestrator container, or under
``AGENTMESH_SECRETS_DIR``), and ``secrets/api_token`` under the current directory
(the host, in a checkout where ``make up`` created it).
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import httpx
from agentmesh_shared import telemetry


class ApiError(Exception):
    """The API answered with an error, or could not be reached; ``exit_code`` says which."""

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code


class ApiSlowError(ApiError):
    """The API accepted the connection but did not answer in time (or kept answering 429)."""


EXIT_UNREACHABLE = 3
EXIT_NOT_FOUND = 4
EXIT_INVALID = 2
EXIT_UNAVAILABLE = 5
EXIT_SLOW = 6
EXIT_UNAUTHORIZED = 7
# Which limit a 429 comes from: `admission` (the mesh is full), `rate` or `in-flight`.
LIMIT_HEADER = "x-agentmesh-limit"
LONG_POLL_MARGIN_S = 10.0  # a long-poll's read timeout: its wait plus this
MAX_RETRY_AFTER_S = 30.0


def _retry_after(response: httpx.Response) -> float:
    try:
        return min(max(float(response.headers.get("retry-after", "1")), 0.1), MAX_RETRY_AFTER_S)
    except ValueError:
        return 1.0


TOKEN_ENV = "AGENTMESH_API_TOKEN"  # noqa: S105 - a variable name
SECRET_NAME = "api_token"  # noqa: S105 - a file name


def _first_token(text: str) -> str:
    """The first token of a token file (the API accepts one per line)."""
    lines = (line.strip() for line in text.splitlines())
    return next((line for line in lines if line and not line.startswith("#")), "")


def _read_token(path: Path) -> str:
    try:
        token = _first_token(path.read_text())
    except OSError as err:
        raise ApiError(
            f"cannot read the API token file {path}: {err.strerror or err}", EXIT_INVALID
        ) from err
    if not token:
        raise ApiError(
            f"the API token file {path} is empty: run scripts/secrets.sh (make up does)",
            EXIT_INVALID,
        )
    return token


def resolve_token(token_file: str | Path | None = None) -> str | None:
    """The API token from the first source that has one (see the module's docstring)."""
    if token_file is not None:
        return _read_token(Path(token_file))
    from_env = _first_token(os.environ.get(TOKEN_ENV, ""))
    if from_env:
        return from_env
    secrets_dir = Path(os.environ.get("AGENTMESH_SECRETS_DIR", "/run/secrets"))
    for candidate in (secrets_dir / SECRET_NAME, Path("secrets") / SECRET_NAME):
        if candidate.is_file() and os.access(candidate, os.R_OK):
            token = _first_token(candidate.read_text())
            if token:
                return token
    return None


class ApiClient:
    def __init__(
        self,
        base_url: str,
        timeout: float = 40.0,
        busy_wait_s: float = 60.0,
        token: str | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout
        self.busy_wait_s = busy_wait_s
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._http = httpx.Client(base_url=self.base_url, timeout=timeout, headers=headers)

    def request(self, method: str, path: str, **kwargs: Any) -> Any:
        headers = telemetry.inject(kwargs.pop("headers", None))
        give_up_at = time.monotonic() + self.busy_wait_s
        while True:
            response = self._send(method, path, headers=headers, **kwargs)
            if response.status_code != 429:
                break
            if response.headers.get(LIMIT_HEADER) == "admission":
                # The mesh is full, not this client too fast: say so, do not queue silently.
                raise ApiSlowError(
                    f"the mesh is busy, task not accepted: {_detail(response)} "
                    f"(Retry-After: {response.headers.get('retry-after', 'a few')} s)",
                    EXIT_SLOW,
                )
            pause = _retry_after(response)
            if time.monotonic() + pause > give_up_at:
                raise ApiSlowError(
                    f"the orchestrator API at {self.base_url} is refusing requests as too many "
                    f"({_detail(response)}); tried for {self.busy_wait_s:.0f}s. Try again later.",
                    EXIT_SLOW,
                )
            time.sleep(pause)
        if response.is_success:
            return response.json()
        code = {
            401: EXIT_UNAUTHORIZED,
            404: EXIT_NOT_FOUND,
            422: EXIT_INVALID,
            409: EXIT_INVALID,
            503: EXIT_UNAVAILABLE,
        }.get(response.status_code, 1)
        raise ApiError(_detail(response), code)

    def _send(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            return self._http.request(method, path, **kwargs)
        except (httpx.ConnectError, httpx.ConnectTimeout) as err:
            raise ApiError(
                f"cannot reach the orchestrator API at {self.base_url} ({type(err).__name__}: {err}). "
                "Is the mesh up? Start it with `make up`, or point AGENTMESH_API_URL at it.",
                EXIT_UNREACHABLE,
            ) from err
        except httpx.TimeoutException as err:
            timeout = kwargs.get("timeout", self.timeout)
            raise ApiSlowError(
                f"the orchestrator API at {self.base_url} is up but did not answer {method} "
                f"{path} within {timeout:.0f}s ({type(err).__name__}); it may be overloaded. "
                "Try again, or check `make logs SERVICE=orchestrator`.",
                EXIT_SLOW,
            ) from err
        except httpx.TransportError as err:
            raise ApiError(
                f"lost the connection to the orchestrator API at {self.base_url} "
                f"({type(err).__name__}: {err}).",
                EXIT_UNREACHABLE,
            ) from err

    def submit(self, body: dict[str, Any], idempotency_key: str | None = None) -> dict[str, Any]:
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else {}
        result: dict[str, Any] = self.request("POST", "/tasks", json=body, headers=headers)
        return result

    def get(self, task_id: str) -> dict[str, Any]:
        result: dict[str, Any] = self.request("GET", f"/tasks/{task_id}")
        return result

    def events(self, task_id: str, after: str, wait: float) -> list[dict[str, Any]]:
        """A long-poll; its read timeout is its wait plus a margin, not the default."""
        result: list[dict[str, Any]] = self.request(
            "GET",
            f"/tasks/{task_id}/events",
            params={"after": after, "wait": wait},
            timeout=httpx.Timeout(self.timeout, read=wait + LONG_POLL_MARGIN_S),
        )
        return result


def _detail(response: httpx.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return response.text
    return str(body.get("detail", response.text)) if isinstance(body, dict) else response.text
