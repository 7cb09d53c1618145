"""Which browser pages may call the server: its own, and ``CHATKIT_CORS_ORIGINS``.

A browser names the page a request comes from in ``Origin``. CORS only keeps
a foreign page from *reading* an answer; a request it may send without a
preflight still arrives and acts. So a request whose ``Origin`` is neither
the server's own (the host the browser addressed, as ``Host`` says) nor an
allowed one is refused before anything happens. Requests without ``Origin``
(servers, scripts, curl) are not browser requests and pass.
"""

from __future__ import annotations

from urllib.parse import urlsplit

from starlette.requests import HTTPConnection
from starlette.responses import Response

from chatkit_server.http.errors import error_response

__all__ = ["refuse_foreign_origin"]


def refuse_foreign_origin(connection: HTTPConnection, allowed: tuple[str, ...]) -> Response | None:
    """A 403 for a request from a page the server does not serve or allow, else ``None``."""
    origin = connection.headers.get("origin")
    if origin is None or origin in allowed or "*" in allowed:
        return None
    # Same host and port as the browser addressed: the server's own page.
    # The scheme is left out: behind a TLS-terminating proxy the page is
    # https while this server sees http.
    if origin != "null" and urlsplit(origin).netloc == connection.headers.get("host"):
        return None
    return error_response(
        403,
        f"Requests from pages of {origin} are not allowed; add it to CHATKIT_CORS_ORIGINS "
        "to let that page use this server.",
        code="origin_not_allowed",
    )
