"""Reading request bodies with a size and a time limit (neither Starlette nor uvicorn has one)."""

from __future__ import annotations

import logging

import anyio
from starlette.requests import Request

from chatkit_server.errors import RequestError

__all__ = ["read_body"]

logger = logging.getLogger(__name__)


async def read_body(request: Request, limit: int, *, within: float | None = None) -> bytes:
    """The request body, refusing more than ``limit`` bytes or ``within`` seconds.

    A declared ``Content-Length`` over the limit is refused before reading;
    a chunked body is counted as it arrives, so an oversized upload never
    sits in memory whole. A body that trickles in (or a Content-Length larger
    than what is sent) would hold the connection forever: past ``within`` seconds
    the request is refused and its connection closed.

    Raises:
        RequestError: 413 over the limit, 408 past the time limit, 400 for a
            malformed Content-Length.
    """
    with anyio.move_on_after(within):
        return await _read(request, limit)
    logger.warning(
        "a request body did not arrive within %g s: refused (CHATKIT_BODY_TIMEOUT)", within
    )
    raise RequestError(
        408,
        f"The request body did not arrive within {within:g} seconds.",
        code="request_timeout",
        # The rest of the body may still come; it must not be read as the
        # next request.
        headers={"Connection": "close"},
    )


async def _read(request: Request, limit: int) -> bytes:
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
