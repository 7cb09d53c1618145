"""``POST /chatkit``: the one route the ChatKit front end talks to."""

from __future__ import annotations

import logging
from collections.abc import AsyncGenerator
from dataclasses import replace

from chatkit.server import StreamingResult
from chatkit.types import ErrorEvent
from starlette.requests import Request
from starlette.responses import Response

from chatkit_server.errors import InvalidCursorError, NotFoundError, RequestError, StoreError
from chatkit_server.http.body import read_body
from chatkit_server.http.errors import error_response, failure_response, request_error_response
from chatkit_server.http.origin import refuse_foreign_origin
from chatkit_server.http.sse import BatchedStreamingResponse
from chatkit_server.http.state import get_state
from chatkit_server.http.uploads import public_base_url
from chatkit_server.pace import Pace

__all__ = ["SSE_HEADERS", "chatkit_endpoint"]

logger = logging.getLogger(__name__)

# no-cache keeps proxies from holding the stream; X-Accel-Buffering stops
# nginx from buffering it, which would deliver a whole answer at once.
SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


async def chatkit_endpoint(request: Request) -> Response:
    """Answer one ChatKit protocol request (JSON, or an SSE stream)."""
    state = get_state(request)
    refused = refuse_foreign_origin(request, state.settings.cors_origins)
    if refused is not None:
        return refused
    media_type = request.headers.get("content-type", "").partition(";")[0].strip().lower()
    if media_type != "application/json":
        # A form or text/plain POST is a "simple" request that any web page
        # may send cross-site without a preflight, with the user's cookies
        # (which a signing-in proxy turns into a user): refuse it unread.
        return error_response(
            415,
            "Send the request as JSON, with 'Content-Type: application/json'.",
            code="unsupported_media_type",
        )
    try:
        # Counted from here, sign-in included, until its model is asked.
        with state.server.arrivals.arriving() as arrival:
            # Who is asking comes first: nothing is read or stored for a stranger.
            context = await state.auth.authenticate(request)
            # Upload and preview links point where this browser reached the server;
            # the answer's reads are spaced out by how busy the process is.
            context = replace(
                context,
                base_url=public_base_url(request, state.settings.public_url),
                pace=Pace(streams=lambda: state.streams.count),
            )
            body = await read_body(
                request, state.settings.max_body_bytes, within=state.settings.body_timeout
            )
            result = await state.server.handle(body, context, arrival=arrival)
    except RequestError as exc:
        return request_error_response(exc)
    except NotFoundError:
        return error_response(404, "No such thread, item or attachment.", code="not_found")
    except InvalidCursorError:
        return error_response(400, "The 'after' cursor does not name an entry of this list.")
    except Exception as exc:
        return failure_response(exc, "answering a ChatKit request")
    if isinstance(result, StreamingResult):
        return BatchedStreamingResponse(
            _ending_with_error_event(result),
            pace=context.pace,
            stall_timeout=state.settings.stream_stall_timeout,
            streams=state.streams,
            media_type="text/event-stream",
            headers=SSE_HEADERS,
        )
    return Response(result.json, media_type="application/json")


_STREAM_FAILED = ErrorEvent(
    code="custom",
    message="The server could not finish this answer. Please try again.",
    allow_retry=True,
)


async def _ending_with_error_event(result: StreamingResult) -> AsyncGenerator[bytes, None]:
    """The SSE frames of ``result``; a failure mid-stream ends with an ``error`` event.

    Once ``200 text/event-stream`` is sent, an exception would only cut the
    connection and the browser would see a dead stream. Cancellation (the
    client left) is not an ``Exception`` and passes through.
    """
    try:
        async for frame in result:
            yield frame
    except Exception as exc:
        if isinstance(exc, StoreError):
            logger.error("store failed in the middle of a stream: %s", exc)
        else:
            logger.exception("unexpected failure in the middle of a stream")
        yield b"data: " + _STREAM_FAILED.model_dump_json().encode() + b"\n\n"
