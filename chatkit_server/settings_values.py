"""Parsing and checking the values of settings, for :mod:`chatkit_server.settings`.

Each function turns one variable's text into the value the server uses, or
raises :class:`SettingsError` naming the variable and what it expects. They
read only what they are given: the environment itself is read in
:mod:`chatkit_server.settings` alone.
"""

from __future__ import annotations

import ipaddress
import math
import re
from collections.abc import Mapping
from pathlib import Path
from urllib.parse import urlsplit

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from chatkit_server.errors import ChatKitServerError

__all__ = [
    "DEFAULT_UPLOAD_TYPES",
    "SettingsError",
    "admin_key",
    "database_url",
    "flag",
    "header_name",
    "jwt_secret",
    "networks",
    "optional_whole_number",
    "pem_file",
    "positive_seconds",
    "public_url",
    "seconds_or_off",
    "upload_types",
    "whole_number",
]


# What an upload may be, by what its bytes are (not what the client says):
# text/plain stands for any UTF-8 text (csv, json, markdown, source code).
DEFAULT_UPLOAD_TYPES = (
    "image/png",
    "image/jpeg",
    "image/gif",
    "image/webp",
    "application/pdf",
    "text/plain",
)


class SettingsError(ChatKitServerError):
    """An environment variable holds a value the server cannot use."""

    def __init__(self, variable: str, message: str) -> None:
        super().__init__(f"{variable}: {message}")
        self.variable = variable


# Short secrets can be guessed offline from a token signed with them (HS256)
# or online against the REST API.
_MIN_SECRET_LENGTH = 32


def admin_key(value: str | None) -> str | None:
    """``CHATKIT_ADMIN_KEY``: long enough not to be guessed."""
    if value is not None and len(value) < _MIN_SECRET_LENGTH:
        raise SettingsError(
            "CHATKIT_ADMIN_KEY",
            f"expected at least {_MIN_SECRET_LENGTH} characters; make one with "
            "`python3 -c 'import secrets; print(secrets.token_urlsafe(32))'`",
        )
    return value


def jwt_secret(value: str | None) -> str | None:
    """``CHATKIT_JWT_SECRET``: long enough for HS256."""
    if value is not None and len(value.encode()) < _MIN_SECRET_LENGTH:
        raise SettingsError(
            "CHATKIT_JWT_SECRET",
            f"expected at least {_MIN_SECRET_LENGTH} bytes (RFC 7518 asks for 256 bits for HS256)",
        )
    return value


def pem_file(path: str | None) -> str | None:
    """The text of the PEM public key file at ``path``."""
    if path is None:
        return None
    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise SettingsError(
            "CHATKIT_JWT_PUBLIC_KEY", f"cannot read {path}: {exc.strerror or exc}"
        ) from None
    except UnicodeDecodeError:
        text = ""
    try:
        key = serialization.load_pem_public_key(text.encode())
    except ValueError:
        raise SettingsError(
            "CHATKIT_JWT_PUBLIC_KEY",
            f"{path} is not a PEM public key (expected a '-----BEGIN PUBLIC KEY-----' block)",
        ) from None
    if not (
        isinstance(key, rsa.RSAPublicKey)
        or (isinstance(key, ec.EllipticCurvePublicKey) and isinstance(key.curve, ec.SECP256R1))
    ):
        raise SettingsError(
            "CHATKIT_JWT_PUBLIC_KEY",
            f"{path} holds a key JWTs cannot use here; expected an RSA public key (RS256) "
            "or an EC P-256 one (ES256)",
        )
    return text


# The types the sniffer tells apart (chatkit_server.files.sniff), and the
# wildcards an operator may write for them.
_UPLOAD_TYPES = (*DEFAULT_UPLOAD_TYPES, "application/octet-stream")
_UPLOAD_WILDCARDS = ("image/*", "*/*")


def upload_types(value: str | None) -> tuple[str, ...]:
    """``CHATKIT_UPLOAD_TYPES``: the types an upload's bytes may be."""
    if value is None:
        return DEFAULT_UPLOAD_TYPES
    types: list[str] = []
    for part in value.split(","):
        kind = part.strip().lower()
        if not kind:
            continue
        if kind not in _UPLOAD_TYPES and kind not in _UPLOAD_WILDCARDS:
            raise SettingsError(
                "CHATKIT_UPLOAD_TYPES",
                f"unknown type {kind!r}; expected some of {', '.join(_UPLOAD_TYPES)}, "
                "image/* or */*",
            )
        types.append(kind)
    return tuple(types)


def public_url(value: str | None) -> str | None:
    """``CHATKIT_PUBLIC_URL``: an http(s) origin, without a trailing slash."""
    if value is None:
        return None
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.netloc or parts.query or parts.fragment:
        raise SettingsError(
            "CHATKIT_PUBLIC_URL",
            f"expected the server's address as browsers see it, e.g. https://chat.example.com, "
            f"got {value!r}",
        )
    return value.rstrip("/")


# RFC 9110 section 5.1: a field name is a token.
_FIELD_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")


def header_name(value: str | None) -> str | None:
    """A header name that requests can carry (else it would never be found)."""
    if value is not None and not _FIELD_NAME.fullmatch(value):
        raise SettingsError(
            "CHATKIT_TRUSTED_USER_HEADER",
            f"{value!r} is not an HTTP header name (e.g. X-Forwarded-User)",
        )
    return value


def networks(value: str | None) -> tuple[str, ...]:
    """Comma-separated addresses or networks, each checked and normalised."""
    networks = []
    for part in (value or "").split(","):
        part = part.strip()
        if not part:
            continue
        try:
            networks.append(str(ipaddress.ip_network(part, strict=False)))
        except ValueError:
            raise SettingsError(
                "CHATKIT_TRUSTED_PROXIES",
                f"{part!r} is not an IP address or network (e.g. 127.0.0.1, 10.0.0.0/8)",
            ) from None
    return tuple(networks)


def database_url(url: str) -> str:
    """Accept the usual spellings and pick the async driver for each backend."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        raise SettingsError(
            "CHATKIT_DATABASE_URL",
            f"expected a URL such as sqlite+aiosqlite:///chat.db, got {url!r}",
        )
    if scheme in ("sqlite", "sqlite+aiosqlite"):
        return f"sqlite+aiosqlite://{rest}"
    if scheme in ("postgres", "postgresql", "postgresql+asyncpg"):
        return f"postgresql+asyncpg://{rest}"
    raise SettingsError(
        "CHATKIT_DATABASE_URL",
        f"unsupported database {scheme!r}: use sqlite+aiosqlite:// or postgresql+asyncpg://",
    )


def positive_seconds(env: Mapping[str, str], name: str, default: float) -> float:
    """A positive number of seconds, or ``default`` when ``name`` is unset."""
    return _seconds(env, name, default, zero_is_off=False)


def seconds_or_off(env: Mapping[str, str], name: str, default: float) -> float:
    """A positive number of seconds, or 0 for "no limit"; ``default`` when ``name`` is unset."""
    return _seconds(env, name, default, zero_is_off=True)


def _seconds(env: Mapping[str, str], name: str, default: float, *, zero_is_off: bool) -> float:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        value = math.nan
    # Written so that NaN (which compares false with everything) is refused.
    if value > 0 or (zero_is_off and value == 0):
        return value
    wanted = "a positive number of seconds" + (", or 0 for no limit" if zero_is_off else "")
    raise SettingsError(name, f"expected {wanted}, got {raw!r}")


def whole_number(env: Mapping[str, str], name: str, default: int, *, minimum: int) -> int:
    """A whole number of at least ``minimum``, or ``default`` when ``name`` is unset."""
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise SettingsError(name, f"expected a whole number, got {raw!r}") from None
    if value < minimum:
        raise SettingsError(name, f"expected at least {minimum}, got {raw!r}")
    return value


def optional_whole_number(env: Mapping[str, str], name: str, *, minimum: int) -> int | None:
    """A whole number of at least ``minimum``, or ``None`` when ``name`` is unset."""
    if not env.get(name, "").strip():
        return None
    return whole_number(env, name, 0, minimum=minimum)


def flag(env: Mapping[str, str], name: str, *, default: bool) -> bool:
    """A yes/no setting (1/0, true/false, yes/no, on/off), or ``default`` when unset."""
    raw = env.get(name, "").strip().lower()
    if not raw:
        return default
    if raw in ("1", "true", "yes", "on"):
        return True
    if raw in ("0", "false", "no", "off"):
        return False
    raise SettingsError(name, f"expected 1/0, true/false, yes/no or on/off, got {raw!r}")
