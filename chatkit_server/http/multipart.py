"""The ``file`` field of a ``multipart/form-data`` body, streamed.

Starlette's ``request.form()`` spools every file to a temporary file of
unbounded size before the route sees a byte, so a size limit could only be
checked after the whole upload was on disk. Here python-multipart's
streaming parser is fed the body as it arrives, and the file's bytes are
handed on as they are parsed: the caller counts them and can stop at the
limit, and nothing but the current chunk is held.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Final

from python_multipart import MultipartParser
from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import parse_options_header

from chatkit_server.errors import RequestError

__all__ = ["FIELD_NAME", "MultipartFile", "boundary_of"]

FIELD_NAME: Final = "file"
"""The form field ChatKit sends the file in."""


def boundary_of(content_type: str) -> bytes:
    """The boundary of a ``multipart/form-data`` content type.

    Raises:
        RequestError: 415 for any other content type, 400 without a boundary.
    """
    media_type, options = parse_options_header(content_type)
    if media_type != b"multipart/form-data":
        raise RequestError(
            415,
            "Send the file as multipart/form-data with a 'file' field.",
            code="unsupported_media_type",
        )
    boundary = options.get(b"boundary")
    if not boundary:
        raise RequestError(400, "The multipart/form-data body has no boundary.")
    return boundary


@dataclass
class _Part:
    headers: dict[bytes, bytes] = field(default_factory=dict)
    header_field: bytearray = field(default_factory=bytearray)
    header_value: bytearray = field(default_factory=bytearray)
    is_file: bool = False


class MultipartFile:
    """The first ``file`` field of a multipart body.

    Call :meth:`open` (reads up to the field's headers), then iterate
    :meth:`chunks` for its bytes (the rest of the body is read and dropped).

    Args:
        body: The request body's chunks.
        boundary: From :func:`boundary_of`.
    """

    def __init__(self, body: AsyncIterator[bytes], boundary: bytes) -> None:
        self._body = body
        self._part = _Part()
        self._found = False
        self._done = False
        self._pending: list[bytes] = []
        self.filename: str | None = None
        self.content_type: str | None = None
        self._parser = MultipartParser(
            boundary,
            {
                "on_part_begin": self._on_part_begin,
                "on_header_field": self._on_header_field,
                "on_header_value": self._on_header_value,
                "on_header_end": self._on_header_end,
                "on_headers_finished": self._on_headers_finished,
                "on_part_data": self._on_part_data,
                "on_part_end": self._on_part_end,
            },
        )

    def _on_part_begin(self) -> None:
        self._part = _Part()

    def _on_header_field(self, data: bytes, start: int, end: int) -> None:
        self._part.header_field += data[start:end]

    def _on_header_value(self, data: bytes, start: int, end: int) -> None:
        self._part.header_value += data[start:end]

    def _on_header_end(self) -> None:
        part = self._part
        part.headers[bytes(part.header_field).lower()] = bytes(part.header_value)
        part.header_field.clear()
        part.header_value.clear()

    def _on_headers_finished(self) -> None:
        disposition, options = parse_options_header(self._part.headers.get(b"content-disposition"))
        if self._found or disposition != b"form-data":
            return
        if options.get(b"name") != FIELD_NAME.encode():
            return
        self._found = self._part.is_file = True
        filename = options.get(b"filename")
        self.filename = filename.decode("utf-8", "replace") if filename else None
        content_type = self._part.headers.get(b"content-type")
        self.content_type = content_type.decode("latin-1").strip() if content_type else None

    def _on_part_data(self, data: bytes, start: int, end: int) -> None:
        if self._part.is_file:
            self._pending.append(data[start:end])

    def _on_part_end(self) -> None:
        if self._part.is_file:
            self._done = True

    async def _pump(self) -> bool:
        """Parse the body's next chunk; ``False`` at its end."""
        chunk = await anext(self._body, None)
        if chunk is None:
            return False
        try:
            self._parser.write(chunk)
        except MultipartParseError:
            raise RequestError(400, "The multipart/form-data body is malformed.") from None
        return True

    async def open(self) -> None:
        """Read until the ``file`` field's headers.

        Raises:
            RequestError: 400, the body is malformed or has no ``file`` field.
        """
        while not self._found:
            if not await self._pump():
                raise RequestError(400, f"The form has no '{FIELD_NAME}' field.")

    async def chunks(self) -> AsyncIterator[bytes]:
        """The ``file`` field's bytes, as they are parsed.

        Raises:
            RequestError: 400, the body ends inside the field.
        """
        while True:
            while self._pending:
                chunk = self._pending.pop(0)
                if chunk:
                    yield chunk
            if self._done:
                break
            if not await self._pump():
                raise RequestError(400, "The multipart/form-data body ends inside the file.")
        # The rest of the body (the closing boundary, other fields): read, so
        # that the connection can serve another request, and dropped.
        while await self._pump():
            self._pending.clear()
