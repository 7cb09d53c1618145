"""The one module that uses private names of other libraries.

Each use here has no public route yet, is pinned by the version ranges in
``pyproject.toml``, and has a behaviour test in ``tests/test_compat.py`` that
fails when the library changes what it does, so an upgrade is a failing test,
not a quiet change. Everything else in the package uses public APIs only.

* :func:`process_parsed`: ``ChatKitServer.process`` takes the raw body and
  parses it with a validator it builds anew on every call (milliseconds of
  CPU per request). The server has to parse the request first anyway, to
  check it before a stream starts (an unknown thread must be a 404, not a
  stream that dies), so the parsed request goes to the two methods that
  ``process`` dispatches to. Proposed upstream: a ``process`` that accepts a
  parsed request.
"""

from __future__ import annotations

from typing import TypeVar

from chatkit.server import ChatKitServer, NonStreamingResult, StreamingResult
from chatkit.types import ChatKitReq, is_streaming_req

__all__ = ["process_parsed"]

_C = TypeVar("_C")


async def process_parsed(
    server: ChatKitServer[_C], request: ChatKitReq, context: _C
) -> StreamingResult | NonStreamingResult:
    """What ``server.process(body, context)`` returns, for the already parsed ``request``."""
    if is_streaming_req(request):
        return StreamingResult(server._process_streaming(request, context))
    return NonStreamingResult(await server._process_non_streaming(request, context))
