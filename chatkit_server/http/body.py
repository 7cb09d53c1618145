"""Reading request bodies with a size limit (neither Starlette nor uvicorn has one)."""

from __future__ import annotations

from starlette.requests import Request

from chatkit_server.errors import RequestError

__all__ = ["read_body"]


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, refusing more than ``limit`` bytes.

    A declared ``Content-Length`` over the limit is refused before reading;
    a chunked body is counted as it arrives, so an oversized upload never
    sits in memory whole.

    Raises:
        RequestError: 413 over the limit, 400 for a malformed Content-Length.
    """
    declared = request.headers.get("content-length")
    if declared is not None:
        try:
            size = int(declared)
        except ValueError:
            raise RequestError(400, "Malformed Content-Length header.") from None
        if size > limit:
            raise _too_large(limit)
    chunks: list[bytes] = []
    received = 0
    async for chunk in request.stream():
        received += len(chunk)
        if received > limit:
            raise _too_large(limit)
        chunks.append(chunk)
    return b"".join(chunks)


def _too_large(limit: int) -> RequestError:
    return RequestError(
        413, f"The request body is larger than the limit of {limit} bytes.", code="too_large"
    )
