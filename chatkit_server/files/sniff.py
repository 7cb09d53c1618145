"""What an upload is, by its bytes: the client's ``mime_type`` is only a claim.

Images and PDFs are told by their first bytes (their "magic numbers"); text
by decoding as UTF-8 from the first byte to the last, as the bytes stream
in, without NUL anywhere or other binary control characters in its first
kilobyte (checking those throughout would halve the upload speed; valid
UTF-8 with a NUL-free body is text in practice). Anything else is
``application/octet-stream``.
"""

from __future__ import annotations

import codecs
from typing import Final

__all__ = [
    "BINARY",
    "PDF",
    "TEXT",
    "Sniffer",
    "allowed",
    "effective_mime_type",
    "is_image",
    "is_text",
]

TEXT: Final = "text/plain"
PDF: Final = "application/pdf"
BINARY: Final = "application/octet-stream"

_HEAD_BYTES: Final = 1024
_MAGIC: Final = (
    (b"\x89PNG\r\n\x1a\n", "image/png"),
    (b"\xff\xd8\xff", "image/jpeg"),
    (b"GIF87a", "image/gif"),
    (b"GIF89a", "image/gif"),
)
# Tab, line feed, form feed, carriage return, escape: control characters text has.
_TEXT_CONTROLS: Final = frozenset(b"\t\n\f\r\x1b")
_BINARY_CONTROLS: Final = bytes(c for c in range(32) if c not in _TEXT_CONTROLS) + b"\x7f"
# Declared types kept for text: they tell the model (and the UI) what kind of text it is.
_TEXT_TYPES: Final = frozenset(
    {
        "application/json",
        "application/xml",
        "application/x-yaml",
        "application/yaml",
        "application/toml",
        "application/javascript",
        "application/x-sh",
        "application/sql",
    }
)


class Sniffer:
    """Feed it an upload's chunks in order; then :attr:`mime_type` says what it is."""

    def __init__(self) -> None:
        self._head = bytearray()
        self._decoder = codecs.getincrementaldecoder("utf-8")()
        self._text = True

    def feed(self, chunk: bytes) -> None:
        """Take the next chunk of the upload."""
        if len(self._head) < _HEAD_BYTES:
            self._head += chunk[: _HEAD_BYTES - len(self._head)]
        if not self._text:
            return
        if not chunk.isascii() or self._decoder.getstate()[0]:
            # Only a non-ASCII chunk, or one that follows a character cut
            # short, needs decoding: ASCII after whole characters is UTF-8
            # as it is. (Decoding builds a string of the whole chunk: it
            # was the slowest step of a text upload.)
            try:
                self._decoder.decode(chunk)
            except UnicodeDecodeError:
                self._text = False
                return
        # NUL by memchr, at memory speed; UTF-16 text and most binary
        # formats have it.
        self._text = b"\x00" not in chunk

    @property
    def settled(self) -> str | None:
        """The type, once the bytes so far decide it whatever follows; else ``None``.

        An image or PDF header decides at once; so does a byte that no text
        has. Only "text" needs the last byte.
        """
        head = self._head  # asked after every chunk: not copied
        if len(head) >= 12 and any(head.startswith(magic) for magic, _ in _MAGIC):
            return self.mime_type
        if len(head) >= 12 and head[:4] == b"RIFF" and head[8:12] == b"WEBP":
            return self.mime_type
        # A PDF header may still come anywhere in the first kilobyte.
        if not self._text and len(head) >= _HEAD_BYTES:
            return self.mime_type
        return None

    @property
    def mime_type(self) -> str:
        """The upload's type by its bytes: an image or PDF type, ``text/plain``, or binary."""
        head = bytes(self._head)
        if self._text and len(head.translate(None, _BINARY_CONTROLS)) != len(head):
            # bytes.translate with a delete table: the length changes iff
            # some binary control character is in the head.
            self._text = False
        for magic, mime_type in _MAGIC:
            if head.startswith(magic):
                return mime_type
        if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
            return "image/webp"
        # PDF readers accept the header anywhere in the first kilobyte.
        if b"%PDF-" in head:
            return PDF
        if self._text:
            try:
                self._decoder.decode(b"", final=True)
            except UnicodeDecodeError:  # the last character was cut short
                return BINARY
            return TEXT
        return BINARY


def effective_mime_type(sniffed: str, declared: str) -> str:
    """The type an upload is kept as: what its bytes are.

    A PNG declared as ``text/plain`` is kept as ``image/png``. For text, a
    declared text type is kept (``text/csv``, ``application/json``): the
    bytes cannot tell CSV from prose, the client's file name can.
    """
    declared = declared.partition(";")[0].strip().lower()
    if sniffed == TEXT and (declared.startswith("text/") or declared in _TEXT_TYPES):
        return declared
    return sniffed


def allowed(sniffed: str, allowed_types: tuple[str, ...]) -> bool:
    """Whether an upload whose bytes are ``sniffed`` may be kept (``CHATKIT_UPLOAD_TYPES``)."""
    if sniffed in allowed_types or "*/*" in allowed_types:
        return True
    if "application/octet-stream" in allowed_types:
        return True
    return is_image(sniffed) and "image/*" in allowed_types


def is_image(mime_type: str) -> bool:
    """Whether a (sniffed or kept) type is an image this server recognises."""
    return mime_type in ("image/png", "image/jpeg", "image/gif", "image/webp")


def is_text(mime_type: str) -> bool:
    """Whether a kept type is text (as :func:`effective_mime_type` keeps text types)."""
    return mime_type.startswith("text/") or mime_type in _TEXT_TYPES
