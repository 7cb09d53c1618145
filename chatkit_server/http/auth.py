"""Sign-in: who sends a request to ``/chatkit``.

Three modes, any of which may be on at once (none: everyone is one local
user):

- **sessions** (``CHATKIT_ADMIN_KEY``): ``Authorization: Bearer cks_...``, a
  client secret minted by ``POST /v1/chatkit/sessions``;
- **JWT** (``CHATKIT_JWT_SECRET`` or ``CHATKIT_JWT_PUBLIC_KEY``):
  ``Authorization: Bearer <JWT>``; the user is ``sub``, ``exp`` is required.
  Only the algorithm that fits the configured key is accepted (HS256 for a
  secret, RS256 or ES256 for a public key), which refuses ``alg: none`` and
  the HS256-signed-with-the-public-key confusion;
- **trusted proxy** (``CHATKIT_TRUSTED_USER_HEADER`` +
  ``CHATKIT_TRUSTED_PROXIES``): the header names the user, believed only from
  the listed addresses. The address is the connection's own peer, so the
  ASGI server must not replace it with a forwarded one (``serve`` turns
  uvicorn's ``proxy_headers`` off in this mode). A trusted proxy's header
  decides even when the request also carries an ``Authorization`` header:
  the proxy signed the user in, and may pass its identity provider's token
  along for someone else.

Every failure is a 401 with a JSON body and a ``WWW-Authenticate``
challenge, decided before the request's body is read or anything else is
asked of the store.
"""

from __future__ import annotations

import ipaddress
import logging
from typing import Any, Final

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from starlette.requests import HTTPConnection

from chatkit_server.context import RequestContext
from chatkit_server.errors import RequestError
from chatkit_server.settings import Settings
from chatkit_server.store.sessions import SECRET_PREFIX, SessionStore

__all__ = ["MAX_USER_LENGTH", "Authenticator"]

logger = logging.getLogger(__name__)

MAX_USER_LENGTH: Final = 255
"""Longest user id (the database column's size)."""

_CHALLENGE: Final = 'Bearer realm="chatkit"'
# RFC 6750 section 3.1: a token was sent, and it is not accepted.
_INVALID_TOKEN: Final = _CHALLENGE + ', error="invalid_token"'


def _unauthorized(message: str, *, challenge: str = _CHALLENGE) -> RequestError:
    return RequestError(401, message, code="unauthorized", headers={"WWW-Authenticate": challenge})


def _invalid_token(message: str) -> RequestError:
    return _unauthorized(message, challenge=_INVALID_TOKEN)


class Authenticator:
    """Turns a request's credential into the :class:`RequestContext` it acts as.

    Args:
        settings: Which modes are on, and their keys.
        sessions: Where session secrets are checked (sessions mode only).
    """

    def __init__(self, settings: Settings, sessions: SessionStore | None) -> None:
        self.modes = settings.sign_in_modes
        self._sessions = sessions if "sessions" in self.modes else None
        self._rate_limit = settings.user_rate_limit or None
        self._jwt_keys: dict[str, Any] = {}
        if settings.jwt_secret is not None:
            self._jwt_keys["HS256"] = settings.jwt_secret
        if settings.jwt_public_key is not None:
            key = serialization.load_pem_public_key(settings.jwt_public_key.encode())
            self._jwt_keys["ES256" if isinstance(key, ec.EllipticCurvePublicKey) else "RS256"] = key
        self._jwt_options: dict[str, Any] = {
            "audience": settings.jwt_audience,
            "issuer": settings.jwt_issuer,
            "leeway": settings.jwt_leeway,
        }
        self._header = settings.trusted_user_header
        self._proxies = tuple(ipaddress.ip_network(net) for net in settings.trusted_proxies)

    @property
    def enabled(self) -> bool:
        """Whether requests must sign in."""
        return bool(self.modes)

    async def authenticate(self, connection: HTTPConnection) -> RequestContext:
        """The context of the request's signed-in user.

        Raises:
            RequestError: 401, the credential is missing, malformed, unknown,
                expired, cancelled or not accepted from where it came.
        """
        if not self.modes:
            return RequestContext()
        proxied = connection.headers.getlist(self._header) if self._header is not None else []
        peer = connection.client.host if connection.client else None
        if proxied and self._trusted(peer):
            return self._proxy_user(proxied)
        authorization = connection.headers.get("authorization")
        if authorization is not None:
            return await self._bearer(authorization)
        if proxied:
            # Someone bypassed the proxy, or the proxy's address is missing
            # from the list: either way the operator should know.
            logger.warning(
                "refused %s from %s, which is not in CHATKIT_TRUSTED_PROXIES",
                self._header,
                peer,
            )
            raise _unauthorized(
                f"{self._header} is accepted only from the trusted proxy; sign in through it."
            )
        raise _unauthorized(f"Sign in first: {self._how_to_sign_in()}.")

    def _how_to_sign_in(self) -> str:
        ways = []
        if self._sessions is not None:
            ways.append("send 'Authorization: Bearer <client_secret of a session>'")
        if self._jwt_keys:
            ways.append("send 'Authorization: Bearer <JWT>'")
        if self._header is not None:
            ways.append(f"come through the proxy that sets {self._header}")
        return ", or ".join(ways)

    def _trusted(self, peer: str | None) -> bool:
        if peer is None:
            return False
        try:
            address = ipaddress.ip_address(peer)
        except ValueError:  # a Unix socket's peer has no IP address
            return False
        # A dual-stack listener (--host ::) sees IPv4 clients as ::ffff:a.b.c.d.
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            address = address.ipv4_mapped
        return any(address in network for network in self._proxies)

    async def _bearer(self, authorization: str) -> RequestContext:
        scheme, _, token = authorization.partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            raise _unauthorized("The Authorization header must be 'Bearer <token>'.")
        if token.startswith(SECRET_PREFIX) and self._sessions is not None:
            return await self._session(token)
        if self._jwt_keys and token.count(".") == 2:
            return self._jwt(token)
        raise _invalid_token(
            f"The bearer token is not one this server accepts; {self._how_to_sign_in()}."
        )

    async def _session(self, secret: str) -> RequestContext:
        assert self._sessions is not None
        record = await self._sessions.verify(secret)
        if record is None:
            raise _invalid_token("The client secret is unknown, expired or cancelled.")
        return RequestContext(
            user_id=record.user_id,
            workflow_id=record.workflow_id,
            session_id=record.id,
            state_variables=record.state_variables,
            limits=record.limits(),
            rate_subject=f"session:{record.id}",
            rate_limit=record.rate_limit,
            tracing=record.tracing,
        )

    def _jwt(self, token: str) -> RequestContext:
        try:
            algorithm = jwt.get_unverified_header(token).get("alg")
        except jwt.InvalidTokenError:
            raise _invalid_token("The bearer token is not a well-formed JWT.") from None
        key = self._jwt_keys.get(algorithm) if isinstance(algorithm, str) else None
        if key is None or not isinstance(algorithm, str):
            raise _invalid_token(
                f"JWTs signed with {algorithm!r} are not accepted; "
                f"this server accepts {', '.join(sorted(self._jwt_keys))}."
            )
        try:
            claims = jwt.decode(
                token,
                key,
                algorithms=[algorithm],
                options={
                    "require": ["exp", "sub"],
                    "verify_aud": self._jwt_options["audience"] is not None,
                },
                **self._jwt_options,
            )
        except jwt.ExpiredSignatureError:
            raise _invalid_token("The JWT has expired.") from None
        except jwt.ImmatureSignatureError:
            raise _invalid_token("The JWT is not valid yet.") from None
        except jwt.InvalidAudienceError:
            raise _invalid_token("The JWT is for another audience.") from None
        except jwt.InvalidIssuerError:
            raise _invalid_token("The JWT is from another issuer.") from None
        except jwt.MissingRequiredClaimError as exc:
            raise _invalid_token(f"The JWT has no {exc.claim!r} claim.") from None
        except jwt.InvalidTokenError:
            raise _invalid_token("The JWT's signature or claims are not valid.") from None
        return self._user(claims["sub"], source="the JWT's 'sub' claim", token=True)

    def _proxy_user(self, values: list[str]) -> RequestContext:
        if len(values) != 1:
            # A proxy that adds its header instead of replacing the client's
            # would let the client's own value come first: refuse to choose.
            raise _unauthorized(f"{self._header} must be sent once, by the trusted proxy.")
        return self._user(values[0].strip(), source=f"the {self._header} header", token=False)

    def _user(self, user: object, *, source: str, token: bool) -> RequestContext:
        if not isinstance(user, str) or not user.strip() or len(user) > MAX_USER_LENGTH:
            refuse = _invalid_token if token else _unauthorized
            raise refuse(f"{source} must name a user in 1 to {MAX_USER_LENGTH} characters.")
        return RequestContext(
            user_id=user,
            rate_subject=f"user:{user}" if self._rate_limit else None,
            rate_limit=self._rate_limit,
        )
