"""The ``file`` field of a multipart body, streamed chunk by chunk."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from chatkit_server.errors import RequestError
from chatkit_server.http.multipart import MultipartFile, boundary_of, find_delimiter


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


# Pieces that come close to the delimiter (\r\n--xyz) without being it: the
# file bytes are drawn from these, so every near miss and split point occurs.
_NEAR_MISSES = [
    b"\r",
    b"\n",
    b"\r\n",
    b"-",
    b"\r\n-",
    b"\r\n--",
    b"\r\n--x",
    b"\r\n--xy",
    b"a",
    b"z",
]


@settings(max_examples=300, deadline=None)
@given(
    data=st.lists(st.sampled_from(_NEAR_MISSES), max_size=60)
    .map(b"".join)
    .filter(lambda data: b"\r\n--xyz" not in data),
    size=st.integers(1, 40),
)
async def test_near_misses_of_the_delimiter_are_data(data: bytes, size: int) -> None:
    body = form(("note", None, data), ("file", "a.csv", data), ("more", None, data))
    _, got = await read(body, size)
    assert got == data


@settings(max_examples=500, deadline=None)
@given(data=st.lists(st.sampled_from([*_NEAR_MISSES, b"\r\n--xyz"]), max_size=80).map(b"".join))
def test_the_delimiter_is_found_where_a_substring_search_finds_it(data: bytes) -> None:
    assert find_delimiter(data, b"\r\n--xyz") == data.find(b"\r\n--xyz")


@pytest.mark.parametrize("size", [1000, 65536])
async def test_a_file_full_of_line_breaks(size: int) -> None:
    # Many carriage returns per chunk: past the few compared one by one, a
    # substring search finds the delimiter.
    data = b"a,b\r\n" * 50_000 + b"\r\n--xy\r\n-\r"
    _, got = await read(form(("file", "a.csv", data)), size)
    assert got == data


async def test_chunks_without_a_delimiter_are_handed_on_as_they_came() -> None:
    # Not copied: the body's own chunks, unless a delimiter may begin in them.
    head = b'--xyz\r\nContent-Disposition: form-data; name="file"\r\n\r\n'
    middle = [b"x" * 1000, b"y\r" * 500 + b"y", b"z" * 1000]

    async def body() -> AsyncIterator[bytes]:
        yield head
        for chunk in middle:
            yield chunk
        yield b"\r\n--xyz--\r\n"

    parsed = MultipartFile(body(), b"xyz")
    await parsed.open()
    got = [chunk async for chunk in parsed.chunks()]
    assert got == middle
    assert all(mine is theirs for mine, theirs in zip(got, middle, strict=True))


async def test_a_preamble_padding_and_a_part_without_headers() -> None:
    body = (
        b"a preamble, ignored\r\n--xyz  \t\r\n\r\nno headers\r\n--xyz\r\n"
        b'Content-Disposition: form-data; name="file"; filename="n.txt"\r\n\r\n'
        b"the file\r\n--xyz--\r\nan epilogue"
    )
    parsed, data = await read(body)
    assert data == b"the file"
    assert parsed.filename == "n.txt"
    assert parsed.content_type is None


@pytest.mark.parametrize(
    "body",
    [
        # Something else on the boundary line.
        b'--xyz junk\r\nContent-Disposition: form-data; name="file"\r\n\r\nx\r\n--xyz--',
        # A header line without a colon.
        b"--xyz\r\nContent-Disposition form-data\r\n\r\nx\r\n--xyz--",
        # Headers that never end.
        b"--xyz\r\nX-Long: " + b"a" * 100_000,
        # A body that ends after a boundary.
        b"--xyz",
    ],
)
async def test_malformed_parts_are_400(body: bytes) -> None:
    with pytest.raises(RequestError) as refused:
        await read(body, 4096)
    assert refused.value.status_code == 400


def test_content_types() -> None:
    assert boundary_of('multipart/form-data; boundary="a b"') == b"a b"
    with pytest.raises(RequestError) as refused:
        boundary_of("application/octet-stream")
    assert refused.value.status_code == 415
    with pytest.raises(RequestError) as refused:
        boundary_of("multipart/form-data")
    assert refused.value.status_code == 400
