"""Sign-in on ``/chatkit``: JWTs, a trusted proxy's header, several modes at once.

Unit tests drive :class:`Authenticator` with hand-made ASGI scopes (the peer
address is whatever the scope says); end-to-end tests run the app on a real
uvicorn, as ``serve`` would, and check that a refused request stores nothing.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
import json
import logging
import re
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
import sqlalchemy as sa
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from starlette.requests import Request

from chatkit_server.context import LOCAL_USER
from chatkit_server.errors import RequestError
from chatkit_server.http.auth import MAX_USER_LENGTH, Authenticator
from chatkit_server.settings import DEFAULT_USER_RATE_LIMIT, Settings
from chatkit_server.store.tables import metadata, threads
from chatkit_server.testing.client import ChatKitClient, user_input
from tests.live import FakeLLM, Live, LiveFactory
from tests.ports import free_port
from tests.test_cli import _env, _wait_healthy

SECRET = "an-hs256-secret-of-more-than-32-bytes-for-tests"
OTHER_SECRET = "another-hs256-secret-of-more-than-32-bytes"
AUDIENCE = "chatkit-tests"
ISSUER = "https://issuer.test"
HEADER = "X-Forwarded-User"

# What the tests sign asymmetric JWTs with.
PrivateKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey


@pytest.fixture(scope="module")
def rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture(scope="module")
def other_rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture(scope="module")
def ec_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


@pytest.fixture(scope="module")
def other_ec_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _public_pem(key: PrivateKey) -> str:
    return (
        key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )


def _claims(**changes: Any) -> dict[str, Any]:
    """A valid payload for alice; a change to ``None`` removes that claim."""
    now = int(time.time())
    claims: dict[str, Any] = {"sub": "alice", "exp": now + 600, "iat": now}
    claims.update(changes)
    return {name: value for name, value in claims.items() if value is not None}


def _hs256(**changes: Any) -> str:
    return jwt.encode(_claims(**changes), SECRET, algorithm="HS256")


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _by_hand(
    header: Mapping[str, Any], claims: Mapping[str, Any], sign: Callable[[bytes], bytes]
) -> str:
    """A JWT put together without PyJWT, which refuses to make the forged ones."""
    signing_input = f"{_b64(json.dumps(header).encode())}.{_b64(json.dumps(claims).encode())}"
    return f"{signing_input}.{_b64(sign(signing_input.encode()))}"


def _unsigned() -> str:
    """``alg: none``: a header, a payload and an empty signature."""
    return _by_hand({"alg": "none", "typ": "JWT"}, _claims(), lambda _: b"")


def _hs256_with_public_key(key: PrivateKey) -> str:
    """The algorithm confusion attack: HS256 with the public key's PEM as the secret."""
    pem = _public_pem(key).encode()
    return _by_hand(
        {"alg": "HS256", "typ": "JWT"},
        _claims(),
        lambda data: hmac.new(pem, data, hashlib.sha256).digest(),
    )


def _settings(**changes: Any) -> Settings:
    return Settings().with_changes(**changes)


def _request(
    headers: Mapping[str, str] | list[tuple[str, str]] | None = None,
    *,
    client: tuple[str, int] | None = ("127.0.0.1", 51000),
) -> Request:
    """A ``POST /chatkit`` as uvicorn would hand it over, from ``client``."""
    headers = headers or {}
    pairs = list(headers.items()) if isinstance(headers, Mapping) else list(headers)
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": "/chatkit",
        "raw_path": b"/chatkit",
        "query_string": b"",
        "root_path": "",
        "headers": [(name.lower().encode(), value.encode()) for name, value in pairs],
        "client": client,
        "server": ("127.0.0.1", 8000),
    }
    return Request(scope)


def _bearer(token: str) -> dict[str, str]:
    return {"authorization": f"Bearer {token}"}


async def _refused(auth: Authenticator, request: Request) -> RequestError:
    with pytest.raises(RequestError) as error:
        await auth.authenticate(request)
    assert error.value.status_code == 401
    assert error.value.code == "unauthorized"
    assert error.value.headers["WWW-Authenticate"].startswith('Bearer realm="chatkit"')
    return error.value


# --- JWT, unit --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    """A credential, and the settings it is tried against."""

    keys: str  # "secret", "rsa", "ec": which key the server has
    token: Callable[[dict[str, PrivateKey]], str]
    fragment: str  # in the 401's message


def _keys_settings(
    kind: str, keys: dict[str, PrivateKey], base: Settings | None = None, **changes: Any
) -> Settings:
    """``base`` (default settings if omitted) with the server's JWT key of ``kind``."""
    key = (
        {"jwt_secret": SECRET} if kind == "secret" else {"jwt_public_key": _public_pem(keys[kind])}
    )
    return (base or Settings()).with_changes(**key, **changes)


_REFUSED: dict[str, Case] = {
    "garbage": Case("secret", lambda k: "not-a-token", "not one this server accepts"),
    "garbage in three parts": Case("secret", lambda k: "a.b.c", "not a well-formed JWT"),
    "expired beyond the leeway": Case(
        "secret", lambda k: _hs256(exp=int(time.time()) - 120), "expired"
    ),
    "not valid yet": Case("secret", lambda k: _hs256(nbf=int(time.time()) + 600), "not valid yet"),
    "no exp": Case("secret", lambda k: _hs256(exp=None), "'exp'"),
    "no sub": Case("secret", lambda k: _hs256(sub=None), "'sub'"),
    "empty sub": Case("secret", lambda k: _hs256(sub=""), "1 to 255 characters"),
    "blank sub": Case("secret", lambda k: _hs256(sub="   "), "1 to 255 characters"),
    "too long sub": Case(
        "secret", lambda k: _hs256(sub="a" * (MAX_USER_LENGTH + 1)), "1 to 255 characters"
    ),
    "number as sub": Case("secret", lambda k: _hs256(sub=42), "not valid"),
    "wrong secret": Case(
        "secret",
        lambda k: jwt.encode(_claims(), OTHER_SECRET, algorithm="HS256"),
        "signature or claims",
    ),
    "alg none": Case("secret", lambda k: _unsigned(), "'none'"),
    "RS256 when only a secret is set": Case(
        "secret", lambda k: jwt.encode(_claims(), k["rsa"], algorithm="RS256"), "'RS256'"
    ),
    "alg none, public key set": Case("rsa", lambda k: _unsigned(), "'none'"),
    "HS256 with the public key as secret": Case(
        "rsa", lambda k: _hs256_with_public_key(k["rsa"]), "'HS256'"
    ),
    "RS256 by another key": Case(
        "rsa",
        lambda k: jwt.encode(_claims(), k["other_rsa"], algorithm="RS256"),
        "signature or claims",
    ),
    "ES256 when the key is RSA": Case(
        "rsa", lambda k: jwt.encode(_claims(), k["ec"], algorithm="ES256"), "'ES256'"
    ),
    "ES256 by another key": Case(
        "ec",
        lambda k: jwt.encode(_claims(), k["other_ec"], algorithm="ES256"),
        "signature or claims",
    ),
    "HS256 with the EC public key as secret": Case(
        "ec", lambda k: _hs256_with_public_key(k["ec"]), "'HS256'"
    ),
}


@pytest.fixture
def keys(
    rsa_key: rsa.RSAPrivateKey,
    other_rsa_key: rsa.RSAPrivateKey,
    ec_key: ec.EllipticCurvePrivateKey,
    other_ec_key: ec.EllipticCurvePrivateKey,
) -> dict[str, PrivateKey]:
    return {"rsa": rsa_key, "other_rsa": other_rsa_key, "ec": ec_key, "other_ec": other_ec_key}


@pytest.mark.parametrize("case", sorted(_REFUSED))
async def test_a_bad_jwt_is_refused(case: str, keys: dict[str, PrivateKey]) -> None:
    refused = _REFUSED[case]
    auth = Authenticator(_keys_settings(refused.keys, keys), None)

    error = await _refused(auth, _request(_bearer(refused.token(keys))))

    assert refused.fragment in error.message
    # A token was sent and is not accepted (RFC 6750 section 3.1).
    assert error.headers["WWW-Authenticate"] == 'Bearer realm="chatkit", error="invalid_token"'


@pytest.mark.parametrize(
    ("headers", "fragment"),
    [
        ({}, "Sign in first"),
        ({"authorization": "Basic YWxpY2U6c2VjcmV0"}, "'Bearer <token>'"),
        ({"authorization": "Bearer"}, "'Bearer <token>'"),
        ({"authorization": "Bearer    "}, "'Bearer <token>'"),
    ],
)
async def test_no_bearer_token_is_refused(headers: dict[str, str], fragment: str) -> None:
    auth = Authenticator(_settings(jwt_secret=SECRET), None)

    error = await _refused(auth, _request(headers))

    assert fragment in error.message
    assert error.headers["WWW-Authenticate"] == 'Bearer realm="chatkit"'


async def test_a_valid_jwt_names_the_user_and_its_rate_limit() -> None:
    auth = Authenticator(_settings(jwt_secret=SECRET), None)

    context = await auth.authenticate(_request(_bearer(_hs256(sub="alice@example.com"))))

    assert context.user_id == "alice@example.com"
    assert context.session_id is None
    assert context.rate_subject == "user:alice@example.com"
    assert context.rate_limit == DEFAULT_USER_RATE_LIMIT


@pytest.mark.parametrize(
    "changes",
    [
        pytest.param({"exp": -10}, id="expired within the 30 s leeway"),
        pytest.param({"nbf": 10}, id="valid in 10 s"),
        pytest.param({"sub": "a" * MAX_USER_LENGTH}, id="longest sub"),
        pytest.param({"aud": "someone-else"}, id="an aud when none is configured"),
    ],
)
async def test_jwts_at_the_edges_are_accepted(changes: dict[str, Any]) -> None:
    now = int(time.time())
    changes = {
        name: now + value if name in ("exp", "nbf") else value for name, value in changes.items()
    }
    auth = Authenticator(_settings(jwt_secret=SECRET), None)

    context = await auth.authenticate(_request(_bearer(_hs256(**changes))))

    assert context.user_id == changes.get("sub", "alice")


@pytest.mark.parametrize(
    ("changes", "fragment"),
    [
        ({"aud": "someone-else"}, "another audience"),
        ({"aud": None}, "'aud'"),
        ({"iss": "https://elsewhere.test"}, "another issuer"),
        ({"iss": None}, "'iss'"),
    ],
)
async def test_audience_and_issuer_are_checked_when_configured(
    changes: dict[str, Any], fragment: str
) -> None:
    auth = Authenticator(
        _settings(jwt_secret=SECRET, jwt_audience=AUDIENCE, jwt_issuer=ISSUER), None
    )
    right = {"aud": AUDIENCE, "iss": ISSUER}

    accepted = await auth.authenticate(_request(_bearer(_hs256(**right))))
    error = await _refused(auth, _request(_bearer(_hs256(**{**right, **changes}))))

    assert accepted.user_id == "alice"
    assert fragment in error.message


@pytest.mark.parametrize(("kind", "algorithm"), [("rsa", "RS256"), ("ec", "ES256")])
async def test_a_public_key_verifies_its_own_algorithm(
    kind: str, algorithm: str, keys: dict[str, PrivateKey]
) -> None:
    auth = Authenticator(_keys_settings(kind, keys), None)
    token = jwt.encode(_claims(sub="bob"), keys[kind], algorithm=algorithm)

    context = await auth.authenticate(_request(_bearer(token)))

    assert context.user_id == "bob"


async def test_a_secret_and_a_public_key_each_verify_only_their_algorithm(
    keys: dict[str, PrivateKey],
) -> None:
    auth = Authenticator(_keys_settings("rsa", keys, jwt_secret=SECRET), None)

    by_secret = await auth.authenticate(_request(_bearer(_hs256(sub="s"))))
    by_key = await auth.authenticate(
        _request(_bearer(jwt.encode(_claims(sub="k"), keys["rsa"], algorithm="RS256")))
    )
    await _refused(auth, _request(_bearer(_hs256_with_public_key(keys["rsa"]))))

    assert (by_secret.user_id, by_key.user_id) == ("s", "k")


# --- trusted proxy header, unit -----------------------------------------------------------------


def _proxy_auth(*proxies: str, **changes: Any) -> Authenticator:
    return Authenticator(
        _settings(trusted_user_header=HEADER, trusted_proxies=proxies, **changes), None
    )


@pytest.mark.parametrize(
    ("proxies", "client"),
    [
        (("127.0.0.1/32",), "127.0.0.1"),
        (("10.0.0.0/8",), "10.9.9.9"),
        (("fd00::/8",), "fd00::5"),
        # A dual-stack listener sees an IPv4 proxy as an IPv4-mapped address.
        (("127.0.0.1/32",), "::ffff:127.0.0.1"),
    ],
)
async def test_the_header_of_a_trusted_proxy_names_the_user(
    proxies: tuple[str, ...], client: str
) -> None:
    auth = _proxy_auth(*proxies)

    context = await auth.authenticate(_request({HEADER: "bob"}, client=(client, 40000)))

    assert context.user_id == "bob"
    assert context.rate_subject == "user:bob"


async def test_the_header_from_an_unlisted_address_is_refused_and_logged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    auth = _proxy_auth("127.0.0.1/32")
    caplog.set_level(logging.WARNING, logger="chatkit_server.http.auth")

    error = await _refused(auth, _request({HEADER: "admin"}, client=("10.9.9.9", 40000)))

    assert "trusted proxy" in error.message
    [record] = caplog.records
    assert record.levelno == logging.WARNING
    assert "10.9.9.9" in record.getMessage()
    assert HEADER in record.getMessage()
    assert "admin" not in record.getMessage()


@pytest.mark.parametrize(
    ("headers", "client", "fragment"),
    [
        pytest.param({}, ("127.0.0.1", 1), "come through the proxy", id="no header"),
        pytest.param({HEADER: ""}, ("127.0.0.1", 1), "1 to 255", id="empty header"),
        pytest.param(
            [(HEADER, "mallory"), (HEADER, "bob")], ("127.0.0.1", 1), "sent once", id="twice"
        ),
        pytest.param({HEADER: "bob"}, None, "trusted proxy", id="no peer address"),
        pytest.param({HEADER: "bob"}, ("unix-socket", 0), "trusted proxy", id="not an IP"),
    ],
)
async def test_the_proxy_header_must_be_there_once_from_a_known_peer(
    headers: dict[str, str] | list[tuple[str, str]],
    client: tuple[str, int] | None,
    fragment: str,
) -> None:
    error = await _refused(_proxy_auth("127.0.0.1/32"), _request(headers, client=client))
    assert fragment in error.message


async def test_a_trusted_proxy_decides_over_an_authorization_header_it_passes_on() -> None:
    # oauth2-proxy, for one, can pass the identity provider's token along.
    auth = _proxy_auth("127.0.0.1/32", jwt_secret=SECRET)

    context = await auth.authenticate(_request({HEADER: "bob", **_bearer("an-idp-token")}))

    assert context.user_id == "bob"


async def test_from_an_unlisted_address_the_bearer_decides_not_the_header() -> None:
    auth = _proxy_auth("127.0.0.1/32", jwt_secret=SECRET)
    outside = ("10.9.9.9", 40000)

    context = await auth.authenticate(
        _request({HEADER: "admin", **_bearer(_hs256(sub="alice"))}, client=outside)
    )
    await _refused(auth, _request({HEADER: "admin", **_bearer("junk")}, client=outside))

    assert context.user_id == "alice"


async def test_with_sign_in_off_everyone_is_the_local_user() -> None:
    auth = Authenticator(Settings(), None)

    contexts = [
        await auth.authenticate(_request(headers))
        for headers in ({}, _bearer("junk"), _bearer(_hs256()), {HEADER: "bob"})
    ]

    assert not auth.enabled
    assert {context.user_id for context in contexts} == {LOCAL_USER}
    assert {context.rate_subject for context in contexts} == {None}


# --- end to end --------------------------------------------------------------------------------


async def _stored(live: Live) -> dict[str, int]:
    """Rows in each table that has any (but the keys the server made for itself at start)."""
    counts = {}
    async with live.state.database.read() as db:
        for table in metadata.sorted_tables:
            if table.name == "server_keys":
                continue
            counts[table.name] = await db.scalar(sa.select(sa.func.count()).select_from(table))
    return {name: count for name, count in counts.items() if count}


def _assert_401(response: httpx.Response) -> None:
    assert response.status_code == 401, response.text
    assert response.headers["content-type"] == "application/json"
    assert response.headers["www-authenticate"].startswith('Bearer realm="chatkit"')
    error = response.json()["error"]
    assert set(error) == {"type", "code", "message"}
    assert (error["type"], error["code"]) == ("authentication_error", "unauthorized")
    assert error["message"]


_CREATE = json.dumps({"type": "threads.create", "params": {"input": user_input("hello")}})
_LIST = json.dumps({"type": "threads.list", "params": {}})
_JSON = {"content-type": "application/json"}


@pytest.mark.parametrize("kind", ["secret", "rsa", "ec"])
async def test_refused_requests_get_401_json_and_store_nothing(
    start_live: LiveFactory,
    live_settings: Settings,
    fake_llm: FakeLLM,
    keys: dict[str, PrivateKey],
    kind: str,
) -> None:
    settings = _keys_settings(kind, keys, live_settings)
    cases = {name: case for name, case in _REFUSED.items() if case.keys == kind}
    headers: dict[str, dict[str, str]] = {
        f"{kind}: {name}": _bearer(case.token(keys)) for name, case in cases.items()
    }
    if kind == "secret":
        headers |= {
            "no credential": {},
            "Basic": {"authorization": "Basic YWxpY2U6c2VjcmV0"},
            # Only from a trusted proxy, and this mode is off.
            "proxy header": {HEADER: "bob"},
        }

    async with start_live(settings) as live:
        for name, extra in headers.items():
            for body in (_CREATE, _LIST):
                response = await live.client.post_raw(body, headers=extra)
                try:
                    _assert_401(response)
                except AssertionError as exc:
                    raise AssertionError(f"{name}: {exc}") from None
        assert await _stored(live) == {}
    assert fake_llm.backend.requests == []


@pytest.mark.parametrize("kind", ["secret", "rsa", "ec"])
async def test_a_signed_in_user_chats_and_owns_the_thread(
    start_live: LiveFactory, live_settings: Settings, keys: dict[str, PrivateKey], kind: str
) -> None:
    settings = _keys_settings(kind, keys, live_settings, jwt_audience=AUDIENCE, jwt_issuer=ISSUER)
    claims = _claims(sub="carol", aud=AUDIENCE, iss=ISSUER)
    key, algorithm = {
        "secret": (SECRET, "HS256"),
        "rsa": (keys["rsa"], "RS256"),
        "ec": (keys["ec"], "ES256"),
    }[kind]
    token = jwt.encode(claims, key, algorithm=algorithm)
    wrong_audience = jwt.encode({**claims, "aud": "x"}, key, algorithm=algorithm)

    async with start_live(settings) as live, ChatKitClient(live.url, headers=_bearer(token)) as c:
        turn = await c.create_thread("hello")
        listed = await c.call("threads.list")
        refused = await live.client.post_raw(_LIST, headers=_bearer(wrong_audience))
        owners = await _owners(live)

    assert turn.errors == []
    assert turn.assistant_text
    assert [thread["id"] for thread in listed["data"]] == [turn.thread_id]
    assert owners == {turn.thread_id: "carol"}
    _assert_401(refused)
    assert "another audience" in refused.json()["error"]["message"]


async def _owners(live: Live) -> dict[str, str]:
    async with live.state.database.read() as db:
        rows = await db.execute(sa.select(threads.c.id, threads.c.user_id))
        return {row.id: row.user_id for row in rows}


async def test_two_jwt_users_see_only_their_own_threads(
    start_live: LiveFactory, live_settings: Settings
) -> None:
    settings = live_settings.with_changes(jwt_secret=SECRET)
    async with (
        start_live(settings) as live,
        ChatKitClient(live.url, headers=_bearer(_hs256(sub="alice"))) as alice,
        ChatKitClient(live.url, headers=_bearer(_hs256(sub="bob"))) as bob,
    ):
        alices = [(await alice.create_thread(f"a{n}")).thread_id for n in range(2)]
        bobs = [(await bob.create_thread("b")).thread_id]
        seen_by_alice = {thread["id"] for thread in (await alice.call("threads.list"))["data"]}
        seen_by_bob = {thread["id"] for thread in (await bob.call("threads.list"))["data"]}

    assert seen_by_alice == set(alices)
    assert seen_by_bob == set(bobs)


async def test_every_mode_at_once_accepts_each_credential(
    start_live: LiveFactory, live_settings: Settings
) -> None:
    settings = live_settings.with_changes(
        jwt_secret=SECRET,
        trusted_user_header=HEADER,
        trusted_proxies=("127.0.0.1/32",),
        admin_key="an-admin-key-of-at-least-32-characters",
    )
    async with start_live(settings) as live:
        assert live.state.sessions is not None
        _, client_secret = await live.state.sessions.create(
            user_id="carol",
            workflow={"id": "default"},
            expires_in=600,
            rate_limit=10,
            configuration={},
        )
        credentials = {
            "alice": _bearer(_hs256(sub="alice")),
            "bob": {HEADER: "bob"},
            "carol": _bearer(client_secret),
        }
        created = {}
        for user, headers in credentials.items():
            async with ChatKitClient(live.url, headers=headers) as client:
                created[user] = (await client.create_thread("hello")).thread_id
                listed = await client.call("threads.list")
                assert [thread["id"] for thread in listed["data"]] == [created[user]], user
        for refused in ({}, _bearer("cks_unknown"), _bearer(_unsigned())):
            _assert_401(await live.client.post_raw(_LIST, headers=refused))
        owners = await _owners(live)

    assert owners == {thread_id: user for user, thread_id in created.items()}


async def test_with_sign_in_off_every_request_is_the_local_user(live: Live) -> None:
    for headers in ({}, _bearer("junk"), {HEADER: "bob"}):
        response = await live.client.post_raw(_CREATE, headers=headers)
        assert response.status_code == 200, response.text

    listed = await live.client.call("threads.list")

    assert len(listed["data"]) == 3
    assert set((await _owners(live)).values()) == {LOCAL_USER}


def _from(address: str) -> httpx.AsyncClient:
    """A client whose connections come from ``address`` (any of 127.0.0.0/8 is this host)."""
    return httpx.AsyncClient(transport=httpx.AsyncHTTPTransport(local_address=address))


async def test_x_forwarded_for_does_not_change_who_is_trusted(
    start_live: LiveFactory, live_settings: Settings
) -> None:
    settings = live_settings.with_changes(
        trusted_user_header=HEADER, trusted_proxies=("127.0.0.1/32",)
    )
    # The worst case an operator can configure: uvicorn believes X-Forwarded-For from anyone.
    async with (
        start_live(settings, forwarded_allow_ips="*") as live,
        _from("127.0.0.1") as proxy,
        _from("127.0.0.2") as outsider,
    ):
        url = live.url + "/chatkit"
        # The proxy names the client it forwards: still the proxy's request.
        forwarded = await proxy.post(
            url, content=_LIST, headers={**_JSON, HEADER: "bob", "x-forwarded-for": "203.0.113.9"}
        )
        # Another host claims to be the proxy.
        spoofed = await outsider.post(
            url, content=_LIST, headers={**_JSON, HEADER: "admin", "x-forwarded-for": "127.0.0.1"}
        )

    assert forwarded.status_code == 200, forwarded.text
    _assert_401(spoofed)


# --- `serve` and the README's examples ---------------------------------------------------------

_README = (Path(__file__).resolve().parents[2] / "README.md").read_text()


def _readme_commands() -> dict[str, list[str]]:
    """The shell blocks of the README's sign-in subsections, by subsection."""
    start = _README.index("\n## Sign-in\n")
    section = _README[start : _README.index("\n## ", start + 1)]
    blocks: dict[str, list[str]] = {}
    for part in section.split("\n### ")[1:]:
        title, _, body = part.partition("\n")
        blocks[title] = re.findall(r"```sh\n(.*?)```", body, flags=re.DOTALL)
    return blocks


def _serve_env(line: str) -> dict[str, str]:
    """The variables a README ``serve`` line sets."""
    *assignments, program, command = shlex.split(line.strip())
    assert (program, command) == (".venv/bin/chatkit-server", "serve")
    return dict(assignment.split("=", 1) for assignment in assignments)


@dataclass
class Served:
    """A ``serve`` process's port, and its output once it has stopped."""

    port: int
    output: str = ""


@contextlib.contextmanager
def _serve(tmp_path: Path, **env: str) -> Iterator[Served]:
    """``chatkit-server serve`` in a process of its own."""
    served = Served(free_port())
    process = subprocess.Popen(
        [sys.executable, "-m", "chatkit_server.cli", "serve", "--port", str(served.port)],
        # No model is needed to sign in: not even the bundled one.
        env=_env(tmp_path, CHATKIT_LOCAL_MODEL="off", **env),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        _wait_healthy(served.port)
        yield served
    finally:
        process.send_signal(signal.SIGTERM)
        served.output, _ = process.communicate(timeout=30)


def test_the_readme_jwt_example_runs_as_printed(tmp_path: Path) -> None:
    serve, client = _readme_commands()["JWT"]
    # "from a clone": .venv is the virtual environment running these tests.
    (tmp_path / ".venv").symlink_to(Path(sys.executable).parent.parent)
    printed = re.search(r"It prints `(.*?)`", _README)
    assert printed is not None

    with _serve(tmp_path, **_serve_env(serve)) as served:
        script = client.replace("127.0.0.1:8000", f"127.0.0.1:{served.port}")
        signed_in = subprocess.run(
            ["bash", "-c", script], cwd=tmp_path, capture_output=True, text=True, check=False
        )
        anonymous = httpx.post(
            f"http://127.0.0.1:{served.port}/chatkit",
            content=_LIST,
            headers={"content-type": "application/json"},
            timeout=5,
        )

    assert signed_in.returncode == 0, signed_in.stderr
    assert signed_in.stdout == printed.group(1)
    _assert_401(anonymous)


def test_serve_judges_the_proxy_by_its_own_address(tmp_path: Path) -> None:
    """The README's proxy ``serve`` line: uvicorn's proxy headers must not replace the peer."""
    [serve] = _readme_commands()["Trusted proxy"]
    # uvicorn's own setting: believe X-Forwarded-For from every address.
    with _serve(tmp_path, **_serve_env(serve), FORWARDED_ALLOW_IPS="*") as served:
        url = f"http://127.0.0.1:{served.port}/chatkit"
        with (
            httpx.Client(transport=httpx.HTTPTransport(local_address="127.0.0.1")) as proxy,
            httpx.Client(transport=httpx.HTTPTransport(local_address="127.0.0.2")) as outsider,
        ):
            forwarded = proxy.post(
                url,
                content=_LIST,
                headers={**_JSON, HEADER: "bob", "x-forwarded-for": "203.0.113.9"},
            )
            spoofed = outsider.post(
                url,
                content=_LIST,
                headers={**_JSON, HEADER: "admin", "x-forwarded-for": "127.0.0.1"},
            )

    assert forwarded.status_code == 200, served.output
    assert forwarded.json() == {"data": [], "has_more": False}
    _assert_401(spoofed)
    assert "refused X-Forwarded-User from 127.0.0.2" in served.output
