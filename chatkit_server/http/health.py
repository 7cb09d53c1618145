"""``GET /healthz``: 200 when the server can answer, 503 when its database cannot."""

from __future__ import annotations

import logging

import anyio
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from chatkit_server.http.state import get_state

__all__ = ["HEALTH_TIMEOUT_SECONDS", "healthz"]

logger = logging.getLogger(__name__)

HEALTH_TIMEOUT_SECONDS = 2.0


async def healthz(request: Request) -> Response:
    """Report readiness: the database answers a trivial query in time."""
    state = get_state(request)
    try:
        with anyio.fail_after(HEALTH_TIMEOUT_SECONDS):
            await state.database.ping()
    except Exception:
        logger.warning("health check: database did not answer", exc_info=True)
        return JSONResponse({"status": "unavailable", "database": "down"}, status_code=503)
    return JSONResponse({"status": "ok"})
