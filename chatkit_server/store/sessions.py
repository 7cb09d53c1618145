"""Sessions: short-lived client secrets minted for one user and one workflow.

The operator's backend asks the REST API for a session
(``POST /v1/chatkit/sessions``) and hands its ``client_secret`` to the
browser, which sends it as a bearer token to ``/chatkit``. Here:

- a secret is 256 random bits; only its keyed hash (HMAC-SHA256) is stored,
  so a copy of the database signs nobody in. A fast hash is right for a
  random secret: there is no dictionary to try;
- a session is ``active`` until ``expires_at`` or until cancelled;
- a verified session is kept in memory until it expires, so a request costs
  no query for its credential. Cancels reach every process by polling:
  :meth:`SessionStore.poll_cancelled` (the app runs it every
  :data:`POLL_SECONDS`) asks once for the sessions cancelled lately and drops
  them. A cancel takes effect at once in the process that made it, and
  within :data:`VERIFIED_TTL` in every other: when polls fail or lag past
  that, the memory is not trusted and each request asks the database.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Final, Literal

import sqlalchemy as sa

from chatkit_server.context import SessionLimits, StateValue
from chatkit_server.store.database import Database
from chatkit_server.store.ids import new_id
from chatkit_server.store.tables import sessions

__all__ = [
    "SECRET_PREFIX",
    "VERIFIED_TTL",
    "SessionRecord",
    "SessionStatus",
    "SessionStore",
    "secret_key",
]

SECRET_PREFIX: Final = "cks_"
"""Every client secret starts with this, so a bearer token's kind is known at a glance."""

VERIFIED_TTL: Final = 1.0
"""Longest time a cancel made in another process may go unnoticed, in seconds."""

POLL_SECONDS: Final = 0.4
"""How often the app asks for lately cancelled sessions (well inside VERIFIED_TTL)."""

# Cancel times come from other machines' clocks: look back this much further.
_CLOCK_SLACK: Final = 30

# Expired and cancelled sessions are kept this long (a cancel of an expired
# session still answers with it), then swept.
RETENTION_SECONDS: Final = 24 * 3600
_CACHE_SIZE: Final = 10_000

SessionStatus = Literal["active", "expired", "cancelled"]


def secret_key(admin_key: str) -> bytes:
    """The key that hashes client secrets, derived from the admin key.

    Rotating the admin key therefore also ends every outstanding session,
    which is what a rotation after a leak should do.
    """
    return hashlib.sha256(b"chatkit-server client secrets\0" + admin_key.encode()).digest()


@dataclass(frozen=True, kw_only=True)
class SessionRecord:
    """A session as stored: who, which workflow, until when, with what limits.

    Attributes:
        id: ``cksess_...``.
        user_id: The user every thread of the session belongs to.
        created_at: Unix seconds.
        expires_at: Unix seconds.
        cancelled_at: Unix seconds, or ``None``.
        workflow: ``{"id", "version", "state_variables", "tracing": {"enabled"}}``.
        rate_limit: Requests per minute.
        configuration: The resolved ``chatkit_configuration`` (REST shape).
    """

    id: str
    user_id: str
    created_at: int
    expires_at: int
    cancelled_at: int | None = None
    workflow: dict[str, Any] = field(default_factory=dict)
    rate_limit: int = 10
    configuration: dict[str, Any] = field(default_factory=dict)

    def status(self, now: float | None = None) -> SessionStatus:
        """``cancelled``, ``expired`` or ``active`` at ``now`` (Unix seconds)."""
        if self.cancelled_at is not None:
            return "cancelled"
        if (time.time() if now is None else now) >= self.expires_at:
            return "expired"
        return "active"

    @property
    def workflow_id(self) -> str:
        """The id of the session's workflow."""
        return str(self.workflow["id"])

    @property
    def tracing(self) -> bool:
        """Whether the session lets its answers be traced."""
        return bool(self.workflow.get("tracing", {}).get("enabled", True))

    @property
    def state_variables(self) -> dict[str, StateValue]:
        """The workflow state the session was minted with."""
        return dict(self.workflow.get("state_variables") or {})

    def limits(self) -> SessionLimits:
        """What the session's configuration allows, for the server to enforce."""
        config = self.configuration
        upload = config.get("file_upload", {})
        history = config.get("history", {})
        max_mb = upload.get("max_file_size")
        return SessionLimits(
            titles=bool(config.get("automatic_thread_titling", {}).get("enabled", True)),
            uploads=bool(upload.get("enabled", False)),
            max_file_bytes=None if max_mb is None else int(max_mb) * 1024 * 1024,
            max_files=upload.get("max_files"),
            files_since=self.created_at,
            history=bool(history.get("enabled", True)),
            recent_threads=history.get("recent_threads"),
        )

    def _data(self) -> str:
        return json.dumps(
            {
                "workflow": self.workflow,
                "rate_limit": self.rate_limit,
                "configuration": self.configuration,
            },
            separators=(",", ":"),
        )


class SessionStore:
    """Sessions in the database, with a short in-process cache of verified secrets.

    Args:
        database: Where sessions live.
        key: The key of the secrets' keyed hash (see :func:`secret_key`).
    """

    def __init__(self, database: Database, *, key: bytes) -> None:
        self._db = database
        self._key = key
        # hash -> record: an LRU of verified sessions
        self._verified: OrderedDict[str, SessionRecord] = OrderedDict()
        # When the last successful poll started (monotonic clock): the memory
        # is trusted only while this is recent.
        self._polled_at = -float("inf")
        self._polled_since: int | None = None

    def _remember(self, digest: str, record: SessionRecord) -> None:
        self._verified[digest] = record
        while len(self._verified) > _CACHE_SIZE:
            self._verified.popitem(last=False)

    def _hash(self, secret: str) -> str:
        return hmac.new(self._key, secret.encode(), hashlib.sha256).hexdigest()

    async def create(
        self,
        *,
        user_id: str,
        workflow: dict[str, Any],
        expires_in: int,
        rate_limit: int,
        configuration: dict[str, Any],
    ) -> tuple[SessionRecord, str]:
        """Mint a session; return it with its client secret (shown only now)."""
        now = int(time.time())
        record = SessionRecord(
            id=new_id("cksess"),
            user_id=user_id,
            created_at=now,
            expires_at=now + expires_in,
            workflow=workflow,
            rate_limit=rate_limit,
            configuration=configuration,
        )
        secret = SECRET_PREFIX + secrets.token_urlsafe(32)
        digest = self._hash(secret)
        await self._db.write_one(
            sa.insert(sessions),
            {
                "id": record.id,
                "secret_hash": digest,
                "user_id": user_id,
                "created_at": record.created_at,
                "expires_at": record.expires_at,
                "cancelled_at": None,
                "data": record._data(),
            },
        )
        # Known good from its first request on: a session is minted for a
        # browser that uses it at once, and that first request would
        # otherwise read it back (with 500 new sessions at once on
        # PostgreSQL, bench/bench_streaming.py --only sessions-concurrent,
        # that read took the p99 stream time from about 1.3x the ideal to
        # 1.45-1.6x). A cancel still reaches this memory as any other.
        self._remember(digest, record)
        return record, secret

    async def verify(self, secret: str) -> SessionRecord | None:
        """The active session whose client secret is ``secret``, else ``None``."""
        digest = self._hash(secret)
        record = self._verified.get(digest)
        if record is None or time.monotonic() - self._polled_at >= VERIFIED_TTL:
            async with self._db.read() as session:
                row = (
                    await session.execute(
                        sa.select(sessions).where(sessions.c.secret_hash == digest)
                    )
                ).one_or_none()
            if row is None:
                self._verified.pop(digest, None)
                return None
            record = _record(row)
            self._remember(digest, record)
        self._verified.move_to_end(digest)
        if record.status() != "active":
            self._verified.pop(digest, None)
            return None
        return record

    async def poll_cancelled(self) -> None:
        """Forget the sessions cancelled since the last poll (in any process).

        One indexed query, whatever the traffic. Raises what the database
        raises; until a poll succeeds again, :meth:`verify` asks the database.
        """
        started = time.monotonic()
        now = int(time.time())
        since = (self._polled_since if self._polled_since is not None else now) - _CLOCK_SLACK
        async with self._db.read() as session:
            cancelled = await session.scalars(
                sa.select(sessions.c.secret_hash).where(sessions.c.cancelled_at >= since)
            )
            for digest in cancelled:
                self._verified.pop(digest, None)
        self._polled_since = now
        self._polled_at = started

    async def get(self, session_id: str) -> SessionRecord | None:
        """The session ``session_id``, whatever its status."""
        async with self._db.read() as session:
            row = (
                await session.execute(sa.select(sessions).where(sessions.c.id == session_id))
            ).one_or_none()
        return None if row is None else _record(row)

    async def cancel(self, session_id: str) -> SessionRecord | None:
        """Cancel a session (its secret stops working); ``None`` if there is none.

        Cancelling a session that has ended already changes nothing.
        """
        now = int(time.time())
        statement = (
            sa.update(sessions)
            .where(
                sessions.c.id == session_id,
                sessions.c.cancelled_at.is_(None),
                sessions.c.expires_at > now,
            )
            .values(cancelled_at=now)
        )
        async with self._db.write() as session:
            await session.execute(statement)
            row = (
                await session.execute(sa.select(sessions).where(sessions.c.id == session_id))
            ).one_or_none()
        if row is None:
            return None
        # This process forgets it at once; others within VERIFIED_TTL.
        self._verified.pop(row.secret_hash, None)
        return _record(row)

    async def sweep(self) -> int:
        """Delete sessions that ended more than a day ago; return how many."""
        cutoff = int(time.time()) - RETENTION_SECONDS
        rows = await self._db.write_one(
            sa.delete(sessions).where(sessions.c.expires_at < cutoff).returning(sessions.c.id)
        )
        return len(rows)


def _record(row: sa.Row[Any]) -> SessionRecord:
    data = json.loads(row.data)
    return SessionRecord(
        id=row.id,
        user_id=row.user_id,
        created_at=row.created_at,
        expires_at=row.expires_at,
        cancelled_at=row.cancelled_at,
        workflow=data["workflow"],
        rate_limit=data["rate_limit"],
        configuration=data["configuration"],
    )
