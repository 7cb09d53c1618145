"""Types by bytes, not by what the client declares."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from chatkit_server.errors import RequestError
from chatkit_server.files import Sniffer, allowed, effective_mime_type
from chatkit_server.files.receive import IncomingFile
from chatkit_server.settings import DEFAULT_UPLOAD_TYPES


def sniff(*chunks: bytes) -> str:
    sniffer = Sniffer()
    for chunk in chunks:
        sniffer.feed(chunk)
    return sniffer.mime_type


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (b"\x89PNG\r\n\x1a\n\x00\x00", "image/png"),
        (b"\xff\xd8\xff\xe0\x00\x10JFIF", "image/jpeg"),
        (b"GIF89a\x01\x00", "image/gif"),
        (b"GIF87a\x01\x00", "image/gif"),
        (b"RIFF\x24\x00\x00\x00WEBPVP8 ", "image/webp"),
        (b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n", "application/pdf"),
        (b"\xef\xbb\xbfname,age\n", "text/plain"),
        ("caf\u00e9 \u2603\n\ttab".encode(), "text/plain"),
        (b"", "text/plain"),
        (b"MZ\x90\x00\x03\x00", "application/octet-stream"),
        (b"text with a NUL\x00", "application/octet-stream"),
        (b"a bell \x07 early on", "application/octet-stream"),
        (b"\xc3\x28 invalid utf-8", "application/octet-stream"),
        (b"RIFF\x24\x00\x00\x00WAVEfmt ", "application/octet-stream"),
    ],
)
def test_types_by_bytes(data: bytes, expected: str) -> None:
    assert sniff(data) == expected


def test_a_character_split_across_chunks_is_still_text() -> None:
    snowman = "\u2603".encode()
    assert sniff(b"a" + snowman[:1], snowman[1:] + b"b") == "text/plain"


def test_text_cut_inside_a_character_is_not_text() -> None:
    assert sniff(b"abc" + "\u2603".encode()[:2]) == "application/octet-stream"


def test_a_character_cut_short_before_plain_ascii_is_not_text() -> None:
    # ASCII chunks pass undecoded, but not one that follows a cut character:
    # here the snowman's last byte would seem to complete it.
    snowman = "\u2603".encode()
    assert sniff(b"abc" + snowman[:2], b"d", snowman[2:]) == "application/octet-stream"
    assert sniff(b"abc", b"\xff", b"def") == "application/octet-stream"
    assert sniff(b"abc", b"def\x00") == "application/octet-stream"


def test_binary_late_in_the_file_is_noticed() -> None:
    assert sniff(b"a" * 100_000, b"\x00\x01") == "application/octet-stream"


@pytest.mark.parametrize(
    ("sniffed", "declared", "kept"),
    [
        ("image/png", "text/plain", "image/png"),  # a PNG declared as text is a PNG
        ("text/plain", "image/png", "text/plain"),  # and "an image" of text is text
        ("text/plain", "text/csv", "text/csv"),  # the kind of text is the client's to say
        ("text/plain", "application/json; charset=utf-8", "application/json"),
        ("text/plain", "application/octet-stream", "text/plain"),
        ("application/pdf", "text/plain", "application/pdf"),
    ],
)
def test_kept_type(sniffed: str, declared: str, kept: str) -> None:
    assert effective_mime_type(sniffed, declared) == kept


def test_allowed_types() -> None:
    assert allowed("image/png", DEFAULT_UPLOAD_TYPES)
    assert allowed("text/plain", DEFAULT_UPLOAD_TYPES)
    assert not allowed("application/octet-stream", DEFAULT_UPLOAD_TYPES)
    assert allowed("image/webp", ("image/*",))
    assert not allowed("application/pdf", ("image/*",))
    assert allowed("application/octet-stream", ("application/octet-stream",))
    assert allowed("application/pdf", ("*/*",))


@pytest.mark.parametrize(
    ("chunks", "settled"),
    [
        ([b"\x89PNG\r\n\x1a\n\x00\x00\x00\r"], "image/png"),
        ([b"\x89PNG"], None),  # too short to tell yet
        ([b"plain text so far " * 100], None),  # text needs the last byte
        ([b"\x00" * 2000], "application/octet-stream"),
        ([b"\x00" * 10], None),  # a PDF header may follow within the first kilobyte
        ([b"\x00" * 10, b"%PDF-1.7" + b"\x00" * 2000], "application/pdf"),
    ],
)
def test_a_type_is_settled_as_soon_as_the_bytes_decide_it(
    chunks: list[bytes], settled: str | None
) -> None:
    sniffer = Sniffer()
    for chunk in chunks:
        sniffer.feed(chunk)
    assert sniffer.settled == settled


async def test_a_refused_type_is_cut_at_its_first_bytes() -> None:
    read = 0

    async def source() -> AsyncIterator[bytes]:
        nonlocal read
        for _ in range(100):
            read += 1
            yield b"\x89PNG\r\n\x1a\n" + b"\x00" * 4088

    incoming = IncomingFile(source(), limit=10**9, allowed_types=("text/plain",))
    with pytest.raises(RequestError) as refused:
        async for _ in incoming:
            pass
    assert refused.value.status_code == 415
    assert read == 1
