from __future__ import annotations

import sys
from pathlib import Path

import pytest
from agentmesh_shared.settings import Settings, SettingsError, load_settings, settings_or_exit
from anthropic.resources.messages.messages import DEPRECATED_MODELS


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import os

    for name in list(os.environ):
        if name.startswith(("AGENTMESH_", "ANTHROPIC_")) or name in {
            "REDIS_URL",
            "CHROMA_URL",
            "REDIS_PASSWORD",
        }:
            monkeypatch.delenv(name)
    monkeypatch.setenv("AGENTMESH_SECRETS_DIR", str(tmp_path / "none"))


def test_a_bad_value_fails_naming_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AGENTMESH_MAX_STEPS", "lots")
    monkeypatch.setenv("REDIS_URL", "http://not-redis")
    with pytest.raises(SettingsError) as err:
        load_settings()
    assert "AGENTMESH_MAX_STEPS" in str(err.value)
    assert "REDIS_URL" in str(err.value)


def test_secrets_are_never_echoed_in_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ANTHROPIC_API_KEY", "changeme")
    monkeypatch.setenv("AGENTMESH_ENVIRONMENT", "production")
    with pytest.raises(SettingsError) as err:
        load_settings()
    assert "placeholder" in str(err.value)


def test_visibility_timeout_must_outlast_subtasks(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AGENTMESH_VISIBILITY_TIMEOUT_S", "60")
    monkeypatch.setenv("AGENTMESH_SUBTASK_TIMEOUT_S", "120")
    with pytest.raises(SettingsError, match="AGENTMESH_VISIBILITY_TIMEOUT_S"):
        load_settings()


def test_secret_files_are_read_and_the_password_is_quoted(tmp_path: Path) -> None:
    (tmp_path / "anthropic_api_key").write_text("sk-from-file\n")
    (tmp_path / "redis_password").write_text("p@ss/word")
    settings = Settings(_secrets_dir=tmp_path)  # type: ignore[call-arg]
    assert settings.anthropic_api_key is not None
    assert settings.anthropic_api_key.get_secret_value() == "sk-from-file"
    assert settings.redis_connection_url() == "redis://:p%40ss%2Fword@127.0.0.1:6379/0"
    assert "sk-from-file" not in repr(settings)


def test_credential_secrets_are_read_and_a_role_user_is_named_by_the_url(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "api_token").write_text("api-secret\n")
    (tmp_path / "chroma_token").write_text("chroma-secret\n")
    (tmp_path / "flower_basic_auth").write_text("admin:pw\n")
    (tmp_path / "redis_password").write_text("coder-pw\n")
    monkeypatch.setenv("REDIS_URL", "redis://coder@broker:6379/0")
    settings = Settings(_secrets_dir=tmp_path)  # type: ignore[call-arg]
    assert settings.api_token is not None and settings.api_token.get_secret_value() == "api-secret"
    assert settings.chroma_token is not None
    assert settings.chroma_token.get_secret_value() == "chroma-secret"
    assert settings.flower_basic_auth is not None
    assert settings.redis_connection_url() == "redis://coder:coder-pw@broker:6379/0"
    (tmp_path / "api_token").write_text("\n")
    assert Settings(_secrets_dir=tmp_path).api_token is None  # type: ignore[call-arg]


def test_the_default_model_is_one_the_sdk_does_not_call_deprecated() -> None:
    """The SDK lists models past (or near) their end of life and warns on every call to
    one; the default must not be among them (claude-sonnet-4-5 reached its end of life
    on 2026-11-30)."""
    model = Settings.model_fields["model"].default
    assert model not in DEPRECATED_MODELS, f"{model} ends {DEPRECATED_MODELS[model]}"


def test_environment_overrides_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AGENTMESH_MODEL", "claude-test")
    monkeypatch.setenv("ANTHROPIC_BASE_URL", "http://gateway:9000")
    settings = load_settings()
    assert settings.model == "claude-test"
    assert str(settings.anthropic_base_url) == "http://gateway:9000/"
    assert not settings.llm_configured


def test_an_entry_point_exits_2_naming_the_bad_variable(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("AGENTMESH_MAX_STEPS", "lots")
    with pytest.raises(SystemExit) as exited:
        settings_or_exit("researcher-worker")
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("researcher-worker: ")
    assert "AGENTMESH_MAX_STEPS" in err
    assert "Traceback" not in err


def test_an_entry_point_sets_the_gil_switch_interval(monkeypatch: pytest.MonkeyPatch) -> None:
    before = sys.getswitchinterval()
    try:
        monkeypatch.setenv("AGENTMESH_GIL_SWITCH_INTERVAL_MS", "2")
        settings_or_exit("coder-worker")
        assert sys.getswitchinterval() == pytest.approx(0.002)
        monkeypatch.setenv("AGENTMESH_GIL_SWITCH_INTERVAL_MS", "0")
        with pytest.raises(SystemExit):
            settings_or_exit("coder-worker")
    finally:
        sys.setswitchinterval(before)
