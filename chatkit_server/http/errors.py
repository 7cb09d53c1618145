"""JSON error answers, in the OpenAI error shape clients already parse."""

from __future__ import annotations

from starlette.responses import JSONResponse

__all__ = ["error_response"]

_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    409: "conflict_error",
    413: "request_too_large",
    501: "not_implemented_error",
}


def error_response(status_code: int, message: str, *, code: str | None = None) -> JSONResponse:
    """A JSON error body ``{"error": {"type", "code", "message"}}`` with ``status_code``.

    ``message`` must be written for the client: never pass ``str(exc)`` of an
    internal error here.
    """
    error_type = _TYPES.get(status_code, "server_error")
    return JSONResponse(
        {"error": {"type": error_type, "code": code or error_type, "message": message}},
        status_code=status_code,
    )
