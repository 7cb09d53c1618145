"""Connection limits: a deadline for request headers and a cap on open connections.

uvicorn closes a keep-alive connection that stays idle between requests
(``timeout_keep_alive``) and answers 503 past ``limit_concurrency``, but it
waits forever for a new connection's first request and for headers that
trickle in a byte at a time: a few thousand such sockets hold the process's
file descriptors and nothing is logged. :class:`HeaderDeadlineProtocol` is
uvicorn's own httptools protocol (passed as ``uvicorn.Config(http=...)``, the
documented way to choose one) with one addition: a request's headers must be
complete within :attr:`HeaderDeadlineProtocol.header_timeout` seconds of the
connection opening or of the request's first byte, else the connection is
closed. It uses only the asyncio ``Protocol`` interface and the parser's
callbacks (``on_message_begin``, ``on_headers_complete``).

The body has its own deadline, enforced where it is read
(:func:`chatkit_server.http.body.read_body`).
"""

from __future__ import annotations

import asyncio
import logging
import resource
import time
from typing import Any, ClassVar

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from chatkit_server.settings import DEFAULT_HEADER_TIMEOUT

__all__ = ["HeaderDeadlineProtocol", "default_connection_limit"]

logger = logging.getLogger(__name__)

# File descriptors kept for everything but client connections: the database
# pool, backend connections beyond one per stream, log and data files.
_RESERVED_DESCRIPTORS = 64
# How often a hit limit is logged at most: a flood must not flood the log too.
_LOG_EVERY_SECONDS = 10.0


def default_connection_limit() -> int:
    """Connections one process can hold open with its open-files limit.

    Each streaming request holds two descriptors (the client's connection
    and one to the model backend); past the limit a request is answered 503
    instead of every ``accept`` failing for lack of descriptors.
    """
    soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        soft = 65536
    return max(16, (soft - _RESERVED_DESCRIPTORS) // 2)


class HeaderDeadlineProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol, closing connections whose headers do not arrive in time.

    The deadline is per process (:meth:`configure`): uvicorn creates the
    protocol itself, once per connection, also in worker processes.
    """

    header_timeout: ClassVar[float] = DEFAULT_HEADER_TIMEOUT
    _last_logged: ClassVar[float] = 0.0

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._header_deadline: asyncio.TimerHandle | None = None

    @classmethod
    def configure(cls, header_timeout: float) -> None:
        """Set the deadline for the connections this process accepts from now on."""
        cls.header_timeout = header_timeout

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        """Accept the connection; its first request's headers are now due."""
        super().connection_made(transport)
        self._arm()

    def connection_lost(self, exc: Exception | None) -> None:
        """Forget the deadline of a connection that is gone."""
        self._disarm()
        super().connection_lost(exc)

    def on_message_begin(self) -> None:
        """A request starts (also the next one on a kept-alive connection)."""
        super().on_message_begin()
        self._arm()

    def on_headers_complete(self) -> None:
        """The headers are in time: the body's own deadline takes over."""
        self._disarm()
        super().on_headers_complete()

    def _arm(self) -> None:
        self._disarm()
        loop = asyncio.get_running_loop()
        self._header_deadline = loop.call_later(self.header_timeout, self._expired)

    def _disarm(self) -> None:
        if self._header_deadline is not None:
            self._header_deadline.cancel()
            self._header_deadline = None

    def _expired(self) -> None:
        self._header_deadline = None
        transport = self.transport
        if transport.is_closing():
            return
        now = time.monotonic()
        if now - HeaderDeadlineProtocol._last_logged >= _LOG_EVERY_SECONDS:
            HeaderDeadlineProtocol._last_logged = now
            logger.warning(
                "closed a connection that sent no complete request headers within %g s "
                "(CHATKIT_HEADER_TIMEOUT); more are not logged for %g s",
                self.header_timeout,
                _LOG_EVERY_SECONDS,
            )
        transport.close()
