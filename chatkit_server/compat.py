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
* :func:`is_stopped_merge_leftover`: ``chatkit.agents.stream_agent_response``
  reads the run and the agent context's own events in a task each; when an
  answer is stopped, the task waiting for the context's next event
  (``_AsyncQueueIterator.__anext__``) is left pending, and asyncio reports it
  as an error ("Task was destroyed but it is pending!") when it is collected:
  one error per stop, about nothing. The app's loop exception handler
  recognises that report by the task's coroutine and logs it at debug level.
  Proposed upstream: cancel the merge's pending tasks when it is closed.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any, TypeVar

from chatkit.server import ChatKitServer, NonStreamingResult, StreamingResult
from chatkit.types import ChatKitReq, is_streaming_req

__all__ = ["is_stopped_merge_leftover", "process_parsed"]

_C = TypeVar("_C")


async def process_parsed(
    server: ChatKitServer[_C], request: ChatKitReq, context: _C
) -> StreamingResult | NonStreamingResult:
    """What ``server.process(body, context)`` returns, for the already parsed ``request``."""
    if is_streaming_req(request):
        return StreamingResult(server._process_streaming(request, context))
    return NonStreamingResult(await server._process_non_streaming(request, context))


# The coroutine of ChatKit's merge task that a stopped answer leaves pending.
_MERGE_LEFTOVER = "_AsyncQueueIterator.__anext__"


def is_stopped_merge_leftover(report: Mapping[str, Any]) -> bool:
    """Whether an asyncio error report is the merge task a stopped answer left behind."""
    task = report.get("task")
    if not isinstance(task, asyncio.Task) or task.done():
        return False
    return getattr(task.get_coro(), "__qualname__", None) == _MERGE_LEFTOVER
