"""Settings are read from the environment once, with errors naming the variable."""

from __future__ import annotations

from pathlib import Path

import pytest

from chatkit_server.settings import DEFAULT_READ_TIMEOUT, Settings, SettingsError


def test_defaults_use_sqlite_in_the_data_dir() -> None:
    settings = Settings.from_env({})
    assert settings.resolved_database_url == "sqlite+aiosqlite:///.chatkit/chatkit.db"
    assert settings.llm_api == "chat_completions"
    assert settings.llm_read_timeout == DEFAULT_READ_TIMEOUT
    assert settings.tracing is False
    assert settings.auth_enabled is False


def test_values_are_parsed(tmp_path: Path) -> None:
    workflows = tmp_path / "workflows.toml"
    workflows.write_text('[workflows.main]\nmodel = "m"\n')
    settings = Settings.from_env(
        {
            "CHATKIT_DATA_DIR": str(tmp_path),
            "CHATKIT_DATABASE_URL": "postgresql://postgres@127.0.0.1/test",
            "CHATKIT_LLM_BASE_URL": "http://127.0.0.1:8080/v1/",
            "CHATKIT_LLM_API": "responses",
            "CHATKIT_LLM_TIMEOUT": "2.5",
            "CHATKIT_LLM_MAX_RETRIES": "3",
            "CHATKIT_WORKFLOWS": str(workflows),
            "CHATKIT_ADMIN_KEY": "k" * 32,
            "CHATKIT_CORS_ORIGINS": "http://a.test, http://b.test,",
            "CHATKIT_TRACING": "yes",
        }
    )
    assert settings.resolved_database_url == "postgresql+asyncpg://postgres@127.0.0.1/test"
    assert settings.llm_base_url == "http://127.0.0.1:8080/v1"
    assert settings.llm_api == "responses"
    assert settings.llm_read_timeout == 2.5
    assert settings.llm_max_retries == 3
    assert settings.workflows_path == workflows
    assert settings.workflows_file is not None
    assert settings.workflows_file.default_workflow == "main"
    assert settings.auth_enabled
    assert settings.cors_origins == ("http://a.test", "http://b.test")
    assert settings.tracing is True


@pytest.mark.parametrize(
    ("variable", "value", "fragment"),
    [
        ("CHATKIT_LLM_API", "grpc", "chat_completions"),
        ("CHATKIT_LLM_BASE_URL", "127.0.0.1:8080", "http://"),
        ("CHATKIT_LLM_TIMEOUT", "soon", "number of seconds"),
        ("CHATKIT_LLM_TIMEOUT", "-1", "positive"),
        ("CHATKIT_LLM_MAX_RETRIES", "2.5", "whole number"),
        ("CHATKIT_MAX_BODY_BYTES", "10", "at least"),
        ("CHATKIT_DATABASE_URL", "mysql://root@localhost/db", "unsupported database"),
        ("CHATKIT_DATABASE_URL", "chat.db", "expected a URL"),
        ("CHATKIT_WORKFLOWS", "/nonexistent/workflows.toml", "no such file"),
        ("CHATKIT_TRACING", "maybe", "true/false"),
        ("CHATKIT_LOG_LEVEL", "loud", "debug"),
    ],
)
def test_invalid_values_name_the_variable(variable: str, value: str, fragment: str) -> None:
    with pytest.raises(SettingsError) as error:
        Settings.from_env({variable: value})
    assert error.value.variable == variable
    assert str(error.value).startswith(variable + ":")
    assert fragment in str(error.value)


def test_settings_are_frozen() -> None:
    settings = Settings.from_env({})
    with pytest.raises(AttributeError):
        settings.llm_model = "other"  # type: ignore[misc]
    assert settings.with_changes(llm_model="other").llm_model == "other"
