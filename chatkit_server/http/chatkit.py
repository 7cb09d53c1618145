"""``POST /chatkit``: the one route the ChatKit front end talks to."""

from __future__ import annotations

import logging

from chatkit.server import StreamingResult
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from ..context import RequestContext
from ..errors import InvalidCursorError, NotFoundError, RequestError, StoreError
from .body import read_body
from .errors import error_response
from .state import get_state

__all__ = ["SSE_HEADERS", "chatkit_endpoint"]

logger = logging.getLogger(__name__)

# no-cache keeps proxies from holding the stream; X-Accel-Buffering stops
# nginx from buffering it, which would deliver a whole answer at once.
SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


async def chatkit_endpoint(request: Request) -> Response:
    """Answer one ChatKit protocol request (JSON, or an SSE stream)."""
    state = get_state(request)
    try:
        body = await read_body(request, state.settings.max_body_bytes)
        context = RequestContext()
        result = await state.server.handle(body, context)
    except RequestError as exc:
        return error_response(exc.status_code, exc.message, code=exc.code)
    except NotFoundError:
        return error_response(404, "No such thread, item or attachment.", code="not_found")
    except InvalidCursorError:
        return error_response(400, "The 'after' cursor does not name an entry of this list.")
    except StoreError:
        logger.exception("store failure while answering a ChatKit request")
        return error_response(503, "The database is unavailable. Please try again.")
    except Exception:
        # Never str(exc): internal errors can carry SQL, paths or secrets.
        logger.exception("unexpected failure while answering a ChatKit request")
        return error_response(500, "Internal server error.")
    if isinstance(result, StreamingResult):
        return StreamingResponse(result, media_type="text/event-stream", headers=SSE_HEADERS)
    return Response(result.json, media_type="application/json")
