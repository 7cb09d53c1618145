"""An upload's bytes on their way to storage: counted, limited and sniffed.

The storage reads the upload through :class:`IncomingFile`, which raises as
soon as the size limit is passed, and as soon as the bytes show a type the
server does not take (an image or PDF header, a byte no text has; text is
known only at the last byte): either way before the storage made anything
visible, so nothing is left behind.
"""

from __future__ import annotations

from collections.abc import AsyncIterable, AsyncIterator

from chatkit_server.errors import RequestError
from chatkit_server.files.sniff import Sniffer, allowed

__all__ = ["IncomingFile"]


class IncomingFile:
    """The chunks of ``source``, refused past ``limit`` bytes or when not of ``allowed_types``.

    Args:
        source: The upload's bytes.
        limit: Most bytes accepted (a ``413`` past it).
        allowed_types: What the bytes may be (``CHATKIT_UPLOAD_TYPES``; a ``415`` otherwise).
    """

    def __init__(
        self, source: AsyncIterable[bytes], *, limit: int, allowed_types: tuple[str, ...]
    ) -> None:
        self._source = source
        self._limit = limit
        self._allowed = allowed_types
        self._sniffer = Sniffer()
        self.size = 0

    @property
    def mime_type(self) -> str:
        """What the bytes read so far are (see :class:`~chatkit_server.files.Sniffer`)."""
        return self._sniffer.mime_type

    async def __aiter__(self) -> AsyncIterator[bytes]:
        checked = False
        async for chunk in self._source:
            self.size += len(chunk)
            if self.size > self._limit:
                raise RequestError(
                    413,
                    f"The file is larger than the limit of {self._limit} bytes.",
                    code="too_large",
                )
            self._sniffer.feed(chunk)
            if not checked and (settled := self._sniffer.settled) is not None:
                checked = True
                self._refuse_unless_allowed(settled)
            yield chunk
        self._refuse_unless_allowed(self.mime_type)

    def _refuse_unless_allowed(self, mime_type: str) -> None:
        if not allowed(mime_type, self._allowed):
            raise RequestError(
                415,
                f"Files of this type ({mime_type}) are not accepted; "
                f"this server takes {', '.join(self._allowed) or 'none'}.",
                code="unsupported_file_type",
            )
