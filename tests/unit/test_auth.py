"""The API's bearer-token check and the CLI's token lookup."""

from __future__ import annotations

from pathlib import Path

import pytest
from agentmesh_orchestrator.auth import (
    BearerAuthMiddleware,
    TokenNotConfiguredError,
    caller_identity,
    credential_id,
)
from agentmesh_orchestrator.client import ApiError, resolve_token
from fastapi import FastAPI, Request
from fastapi.testclient import TestClient

pytestmark = pytest.mark.unit
TOKEN = "s3cret-token"


def _client() -> TestClient:
    app = FastAPI()

    @app.get("/tasks")
    def tasks(request: Request) -> dict[str, str | None]:
        return {"identity": caller_identity(request)}

    @app.get("/healthz")
    def healthz(request: Request) -> dict[str, str | None]:
        return {"identity": caller_identity(request)}

    app.add_middleware(BearerAuthMiddleware, token=TOKEN)
    return TestClient(app)


@pytest.mark.parametrize(
    "header",
    [None, "Bearer", "Bearer wrong", f"Basic {TOKEN}", f"Bearer {TOKEN}x", f"bearer{TOKEN}"],
)
def test_a_request_without_the_right_token_gets_401_with_a_sentence(header: str | None) -> None:
    reply = _client().get("/tasks", headers={"Authorization": header} if header else {})
    assert reply.status_code == 401
    assert reply.headers["www-authenticate"] == 'Bearer realm="agentmesh"'
    assert "Authorization: Bearer" in reply.json()["detail"]


def test_the_right_token_passes_and_names_the_caller() -> None:
    client = _client()
    for scheme in ("Bearer", "bearer"):
        reply = client.get("/tasks", headers={"Authorization": f"{scheme} {TOKEN}"})
        assert reply.status_code == 200
        assert reply.json() == {"identity": credential_id(TOKEN)}
    assert credential_id(TOKEN).startswith("token:") and TOKEN not in credential_id(TOKEN)


def test_open_paths_answer_without_a_token_and_with_no_identity() -> None:
    assert _client().get("/healthz").json() == {"identity": None}


def test_the_api_will_not_run_without_a_token() -> None:
    with pytest.raises(TokenNotConfiguredError, match="secrets/api_token"):
        BearerAuthMiddleware(FastAPI(), token="")


def test_the_cli_token_comes_from_file_then_env_then_secret_then_checkout(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    secrets_dir = tmp_path / "run-secrets"
    secrets_dir.mkdir()
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("AGENTMESH_SECRETS_DIR", str(secrets_dir))
    monkeypatch.delenv("AGENTMESH_API_TOKEN", raising=False)
    assert resolve_token() is None
    (tmp_path / "secrets").mkdir()
    (tmp_path / "secrets" / "api_token").write_text("from-checkout\n")
    assert resolve_token() == "from-checkout"
    (secrets_dir / "api_token").write_text("from-secret\n")
    assert resolve_token() == "from-secret"
    monkeypatch.setenv("AGENTMESH_API_TOKEN", "from-env")
    assert resolve_token() == "from-env"
    explicit = tmp_path / "explicit"
    explicit.write_text("  from-file \n")
    assert resolve_token(explicit) == "from-file"
    explicit.write_text("\n")
    with pytest.raises(ApiError, match="is empty"):
        resolve_token(explicit)
    with pytest.raises(ApiError, match="cannot read the API token file"):
        resolve_token(tmp_path / "missing")
