"""Settings are read from the environment once, with errors naming the variable."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from chatkit_server.settings import (
    DEFAULT_READ_TIMEOUT,
    DEFAULT_USER_RATE_LIMIT,
    Settings,
    SettingsError,
)


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
            "CHATKIT_DATABASE_POOL_SIZE": "12",
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
    assert settings.database_pool_size == 12
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
        ("CHATKIT_LLM_TIMEOUT", "nan", "positive"),
        ("CHATKIT_LLM_MAX_RETRIES", "2.5", "whole number"),
        ("CHATKIT_MAX_BODY_BYTES", "10", "at least"),
        ("CHATKIT_MAX_TITLE_CHARS", "0", "at least"),
        ("CHATKIT_MAX_ATTACHMENTS", "-1", "at least"),
        ("CHATKIT_MAX_UPLOAD_BYTES", "lots", "whole number"),
        ("CHATKIT_DATABASE_URL", "mysql://root@localhost/db", "unsupported database"),
        ("CHATKIT_DATABASE_URL", "chat.db", "expected a URL"),
        ("CHATKIT_DATABASE_POOL_SIZE", "0", "at least 1"),
        ("CHATKIT_WORKFLOWS", "/nonexistent/workflows.toml", "no such file"),
        ("CHATKIT_TRACING", "maybe", "true/false"),
        ("CHATKIT_LOG_LEVEL", "loud", "debug"),
        ("CHATKIT_UPLOAD_TYPES", "image/png,image/svg+xml", "'image/svg+xml'"),
        ("CHATKIT_ATTACHMENT_STORAGE", "s3", "'local' or 'database'"),
        ("CHATKIT_UPLOAD_GRACE", "10", "at least 60"),
        ("CHATKIT_PUBLIC_URL", "chat.example.com", "as browsers see it"),
        ("CHATKIT_PUBLIC_URL", "https://chat.example.com/?x=1", "as browsers see it"),
        ("CHATKIT_LLM_VISION", "sometimes", "on/off"),
        ("CHATKIT_ANSWER_MAX_SECONDS", "-1", "or 0 for no limit"),
        ("CHATKIT_ANSWER_MAX_SECONDS", "nan", "or 0 for no limit"),
        ("CHATKIT_STREAM_STALL_TIMEOUT", "0", "positive"),
    ],
)
def test_invalid_values_name_the_variable(variable: str, value: str, fragment: str) -> None:
    with pytest.raises(SettingsError) as error:
        Settings.from_env({variable: value})
    assert error.value.variable == variable
    assert str(error.value).startswith(variable + ":")
    assert fragment in str(error.value)


def test_a_limit_in_seconds_may_be_0_for_none() -> None:
    settings = Settings.from_env({"CHATKIT_ANSWER_MAX_SECONDS": "0"})
    assert settings.answer_max_seconds == 0
    assert Settings.from_env({"CHATKIT_ANSWER_MAX_SECONDS": "2.5"}).answer_max_seconds == 2.5


def test_settings_are_frozen() -> None:
    settings = Settings.from_env({})
    with pytest.raises(AttributeError):
        settings.llm_model = "other"  # type: ignore[misc]
    assert settings.with_changes(llm_model="other").llm_model == "other"


# --- sign-in -----------------------------------------------------------------------------------


def _pem(key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey) -> bytes:
    return key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def test_sign_in_is_off_by_default() -> None:
    settings = Settings.from_env({})
    assert settings.sign_in_modes == ()
    assert settings.user_rate_limit == DEFAULT_USER_RATE_LIMIT
    assert settings.trusted_proxies == ()


def test_sign_in_values_are_parsed() -> None:
    settings = Settings.from_env(
        {
            "CHATKIT_ADMIN_KEY": "k" * 32,
            # 32 bytes in 16 characters: the length is counted in bytes.
            "CHATKIT_JWT_SECRET": "é" * 16,
            "CHATKIT_JWT_AUDIENCE": "chat",
            "CHATKIT_JWT_ISSUER": "https://issuer.test",
            "CHATKIT_TRUSTED_USER_HEADER": "X-Forwarded-User",
            "CHATKIT_TRUSTED_PROXIES": " 127.0.0.1, 10.1.2.3/8,::1,",
            "CHATKIT_RATE_LIMIT": "0",
        }
    )
    assert settings.sign_in_modes == ("sessions", "jwt", "proxy")
    assert settings.admin_key == "k" * 32
    assert settings.jwt_secret == "é" * 16
    assert settings.jwt_public_key is None
    assert (settings.jwt_audience, settings.jwt_issuer) == ("chat", "https://issuer.test")
    assert settings.trusted_user_header == "X-Forwarded-User"
    assert settings.trusted_proxies == ("127.0.0.1/32", "10.0.0.0/8", "::1/128")
    assert settings.user_rate_limit == 0


@pytest.mark.parametrize(
    "key",
    [
        pytest.param(
            lambda: rsa.generate_private_key(public_exponent=65537, key_size=2048), id="RSA"
        ),
        pytest.param(lambda: ec.generate_private_key(ec.SECP256R1()), id="EC P-256"),
    ],
)
def test_a_public_key_file_is_read(tmp_path: Path, key: Callable[[], Any]) -> None:
    path = tmp_path / "jwt.pem"
    path.write_bytes(_pem(key()))

    settings = Settings.from_env({"CHATKIT_JWT_PUBLIC_KEY": str(path)})

    assert settings.jwt_public_key == path.read_text()
    assert settings.sign_in_modes == ("jwt",)


def _file(content: bytes | Callable[[], bytes] | None) -> Callable[[Path], str]:
    """A file in the test's directory with ``content`` (``None``: a directory)."""

    def write(directory: Path) -> str:
        path = directory / "key.pem"
        if content is None:
            path.mkdir()
        else:
            path.write_bytes(content() if callable(content) else content)
        return str(path)

    return write


def _private_pem() -> bytes:
    return ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _der() -> bytes:
    return (
        ec.generate_private_key(ec.SECP256R1())
        .public_key()
        .public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    )


_BAD_PUBLIC_KEYS: dict[str, tuple[Callable[[Path], str], str]] = {
    "missing": (lambda directory: str(directory / "nope.pem"), "cannot read"),
    "a directory": (_file(None), "cannot read"),
    "not PEM": (_file(b"hello\n"), "not a PEM public key"),
    "DER": (_file(_der), "not a PEM public key"),
    "a private key": (_file(_private_pem), "not a PEM public key"),
    "EC P-384": (
        _file(lambda: _pem(ec.generate_private_key(ec.SECP384R1()))),
        "EC P-256",
    ),
    "Ed25519": (_file(lambda: _pem(ed25519.Ed25519PrivateKey.generate())), "RSA public key"),
}


@pytest.mark.parametrize("case", sorted(_BAD_PUBLIC_KEYS))
def test_an_unusable_public_key_file_names_the_variable(tmp_path: Path, case: str) -> None:
    path, fragment = _BAD_PUBLIC_KEYS[case]
    with pytest.raises(SettingsError) as error:
        Settings.from_env({"CHATKIT_JWT_PUBLIC_KEY": path(tmp_path)})
    assert error.value.variable == "CHATKIT_JWT_PUBLIC_KEY"
    assert str(error.value).startswith("CHATKIT_JWT_PUBLIC_KEY: ")
    assert fragment in str(error.value)


_PROXY = {"CHATKIT_TRUSTED_USER_HEADER": "X-Forwarded-User", "CHATKIT_TRUSTED_PROXIES": "10.0.0.1"}


@pytest.mark.parametrize(
    ("env", "variable", "fragment"),
    [
        ({"CHATKIT_ADMIN_KEY": "k" * 31}, "CHATKIT_ADMIN_KEY", "at least 32 characters"),
        ({"CHATKIT_JWT_SECRET": "s" * 31}, "CHATKIT_JWT_SECRET", "at least 32 bytes"),
        ({"CHATKIT_JWT_SECRET": "é" * 15}, "CHATKIT_JWT_SECRET", "at least 32 bytes"),
        ({"CHATKIT_JWT_AUDIENCE": "chat"}, "CHATKIT_JWT_AUDIENCE", "CHATKIT_JWT_SECRET"),
        ({"CHATKIT_JWT_ISSUER": "https://i.test"}, "CHATKIT_JWT_ISSUER", "CHATKIT_JWT_PUBLIC_KEY"),
        (
            {"CHATKIT_TRUSTED_USER_HEADER": "X-Forwarded-User"},
            "CHATKIT_TRUSTED_PROXIES",
            "CHATKIT_TRUSTED_USER_HEADER is set",
        ),
        (
            {"CHATKIT_TRUSTED_PROXIES": "127.0.0.1"},
            "CHATKIT_TRUSTED_USER_HEADER",
            "CHATKIT_TRUSTED_PROXIES is set",
        ),
        ({**_PROXY, "CHATKIT_TRUSTED_PROXIES": "nginx"}, "CHATKIT_TRUSTED_PROXIES", "'nginx'"),
        (
            {**_PROXY, "CHATKIT_TRUSTED_PROXIES": "10.0.0.1,10.0.0.0/33"},
            "CHATKIT_TRUSTED_PROXIES",
            "'10.0.0.0/33' is not an IP address",
        ),
        (
            {**_PROXY, "CHATKIT_TRUSTED_USER_HEADER": "X Forwarded User"},
            "CHATKIT_TRUSTED_USER_HEADER",
            "not an HTTP header name",
        ),
        ({"CHATKIT_RATE_LIMIT": "-1"}, "CHATKIT_RATE_LIMIT", "at least 0"),
        ({"CHATKIT_RATE_LIMIT": "many"}, "CHATKIT_RATE_LIMIT", "whole number"),
    ],
)
def test_invalid_sign_in_values_name_the_variable(
    env: dict[str, str], variable: str, fragment: str
) -> None:
    with pytest.raises(SettingsError) as error:
        Settings.from_env(env)
    assert error.value.variable == variable
    assert str(error.value).startswith(variable + ": ")
    assert fragment in str(error.value)


def test_request_caps_are_read() -> None:
    settings = Settings.from_env(
        {
            "CHATKIT_MAX_TITLE_CHARS": "80",
            "CHATKIT_MAX_ATTACHMENTS": "0",
            "CHATKIT_MAX_UPLOAD_BYTES": "1048576",
        }
    )
    assert (settings.max_title_chars, settings.max_attachments, settings.max_upload_bytes) == (
        80,
        0,
        1048576,
    )
    defaults = Settings.from_env({})
    assert (defaults.max_title_chars, defaults.max_attachments, defaults.max_upload_bytes) == (
        200,
        10,
        20 * 1024 * 1024,
    )


def test_attachment_settings_are_read(tmp_path: Path) -> None:
    defaults = Settings.from_env({"CHATKIT_DATA_DIR": str(tmp_path)})
    assert defaults.attachment_storage == "local"
    assert defaults.attachments_dir == tmp_path / "attachments"
    assert "application/octet-stream" not in defaults.upload_types
    assert defaults.public_url is None
    assert defaults.llm_vision is False

    settings = Settings.from_env(
        {
            "CHATKIT_UPLOAD_TYPES": " image/* , Text/Plain,",
            "CHATKIT_ATTACHMENT_STORAGE": "database",
            "CHATKIT_UPLOAD_GRACE": "3600",
            "CHATKIT_PUBLIC_URL": "https://chat.example.com/",
            "CHATKIT_LLM_VISION": "on",
        }
    )
    assert settings.upload_types == ("image/*", "text/plain")
    assert settings.attachment_storage == "database"
    assert settings.upload_grace == 3600
    assert settings.public_url == "https://chat.example.com"
    assert settings.llm_vision is True
