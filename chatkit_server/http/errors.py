"""JSON error answers, in the OpenAI error shape clients already parse."""

from __future__ import annotations

import logging
from collections.abc import Mapping

from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response

from chatkit_server.errors import RequestError, StoreError

__all__ = [
    "error_response",
    "failure_response",
    "http_exception_response",
    "internal_error_response",
    "request_error_response",
]

logger = logging.getLogger(__name__)

_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    405: "invalid_request_error",
    409: "conflict_error",
    413: "request_too_large",
    415: "invalid_request_error",
    429: "rate_limit_error",
    501: "not_implemented_error",
}


def error_response(
    status_code: int,
    message: str,
    *,
    code: str | None = None,
    headers: Mapping[str, str] | None = None,
) -> JSONResponse:
    """A JSON error body ``{"error": {"type", "code", "message"}}`` with ``status_code``.

    ``message`` must be written for the client: never pass ``str(exc)`` of an
    internal error here.
    """
    error_type = _TYPES.get(status_code, "server_error")
    return JSONResponse(
        {"error": {"type": error_type, "code": code or error_type, "message": message}},
        status_code=status_code,
        headers=headers,
    )


def failure_response(exc: Exception, doing: str) -> Response:
    """The answer to a failure a route did not expect, logged with what it was ``doing``.

    A client that left mid-request gets a bare 400 (nobody reads it); a
    store failure is a 503 (the database may come back); anything else is a
    500. The client never sees the exception's text: internal errors can
    carry SQL, paths or secrets.
    """
    if isinstance(exc, ClientDisconnect):
        logger.info("client disconnected before its request was read (%s)", doing)
        return Response(status_code=400)
    if isinstance(exc, StoreError):
        logger.exception("store failure while %s", doing)
        return error_response(503, "The database is unavailable. Please try again.")
    logger.exception("unexpected failure while %s", doing)
    return error_response(500, "Internal server error.")


def request_error_response(exc: RequestError) -> JSONResponse:
    """The JSON answer of a :class:`RequestError`: its status, code, message and headers."""
    return error_response(exc.status_code, exc.message, code=exc.code, headers=exc.headers)


async def http_exception_response(request: Request, exc: Exception) -> Response:
    """Starlette's own errors (no such route, method not allowed) as JSON.

    Installed as the app's ``HTTPException`` handler, so that every error a
    client sees has the same shape, not Starlette's plain-text default.
    """
    assert isinstance(exc, HTTPException)  # registered for HTTPException only
    if exc.status_code == 405:
        # Sorted: Starlette keeps a route's methods in a set, in no stable order.
        allow = exc.headers.get("Allow", "") if exc.headers else ""
        allowed = " or ".join(sorted(method.strip() for method in allow.split(",")))
        message = f"{request.method} is not allowed on {request.url.path}; use {allowed}."
        code = "method_not_allowed"
    elif exc.status_code == 404:
        message, code = f"No such path: {request.url.path}.", "not_found"
    else:
        message, code = exc.detail, None
    return error_response(exc.status_code, message, code=code, headers=exc.headers)


async def internal_error_response(request: Request, exc: Exception) -> Response:
    """A failure no route caught: JSON 500, never ``str(exc)`` (it may hold secrets).

    Starlette logs the traceback and re-raises after this answer is sent.
    """
    return error_response(500, "Internal server error.")
