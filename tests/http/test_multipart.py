"""The ``file`` field of a multipart body, streamed chunk by chunk."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from chatkit_server.errors import RequestError
from chatkit_server.http.multipart import MultipartFile, boundary_of


def form(*parts: tuple[str, str | None, bytes], boundary: str = "xyz") -> bytes:
    body = b""
    for name, filename, data in parts:
        disposition = f'form-data; name="{name}"'
        if filename is not None:
            disposition += f'; filename="{filename}"'
        body += f"--{boundary}\r\nContent-Disposition: {disposition}\r\n".encode()
        if filename is not None:
            body += b"Content-Type: text/csv\r\n"
        body += b"\r\n" + data + b"\r\n"
    return body + f"--{boundary}--\r\n".encode()


async def pieces(data: bytes, size: int) -> AsyncIterator[bytes]:
    for start in range(0, len(data), size):
        yield data[start : start + size]


async def read(data: bytes, size: int = 7) -> tuple[MultipartFile, bytes]:
    parsed = MultipartFile(pieces(data, size), b"xyz")
    await parsed.open()
    return parsed, b"".join([chunk async for chunk in parsed.chunks()])


@pytest.mark.parametrize("size", [1, 3, 7, 1000])
async def test_the_file_field_whatever_the_chunking(size: int) -> None:
    body = form(("note", None, b"ignored"), ("file", "a.csv", b"x,y\r\n1,2"), ("more", None, b"z"))
    parsed, data = await read(body, size)
    assert data == b"x,y\r\n1,2"
    assert parsed.filename == "a.csv"
    assert parsed.content_type == "text/csv"


async def test_only_the_first_file_field_counts() -> None:
    _, data = await read(form(("file", "a", b"first"), ("file", "b", b"second")))
    assert data == b"first"


async def test_a_form_without_a_file_field_is_400() -> None:
    with pytest.raises(RequestError) as refused:
        await read(form(("other", "a", b"data")))
    assert refused.value.status_code == 400
    assert "'file'" in refused.value.message


async def test_a_body_that_ends_inside_the_file_is_400() -> None:
    body = form(("file", "a", b"complete"))[:-20]
    with pytest.raises(RequestError) as refused:
        await read(body)
    assert refused.value.status_code == 400


async def test_garbage_is_400() -> None:
    with pytest.raises(RequestError) as refused:
        await read(b"this is not multipart at all, no boundary anywhere" * 10)
    assert refused.value.status_code == 400


def test_content_types() -> None:
    assert boundary_of('multipart/form-data; boundary="a b"') == b"a b"
    with pytest.raises(RequestError) as refused:
        boundary_of("application/octet-stream")
    assert refused.value.status_code == 415
    with pytest.raises(RequestError) as refused:
        boundary_of("multipart/form-data")
    assert refused.value.status_code == 400
