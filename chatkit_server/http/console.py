"""``GET /``: the built-in console, a chat page served from the package itself.

The page (``chatkit_server/console/``) is plain JavaScript modules and CSS,
with the two libraries it uses vendored beside it (``scripts/vendor-console``):
nothing comes from another host and nothing is built when it is served. It
speaks only ``POST /chatkit`` and ``GET /chatkit/workflows``, as the ChatKit
web component does.

Every file is read once, when the routes are made, and served from memory
with a strict Content-Security-Policy: the page runs scripts from this origin
only (no inline script, no ``eval``), talks only to this origin, and may be
framed only by this origin. Model output is rendered as sanitized Markdown,
and the policy is the second line of defence should anything slip through.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from importlib import resources

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from chatkit_server.http.errors import error_response

__all__ = ["CONSOLE_ASSET_PREFIX", "CONTENT_SECURITY_POLICY", "console_routes"]

# Assets live under one prefix, so the page's own routes never shadow the API's.
CONSOLE_ASSET_PREFIX = "/console/"

# 'self' everywhere it matters; blob: and data: images for previews of files
# the user picked (they never leave the browser before the upload).
CONTENT_SECURITY_POLICY = "; ".join(
    [
        "default-src 'none'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self' blob: data:",
        "connect-src 'self'",
        "base-uri 'none'",
        "form-action 'none'",
        "frame-ancestors 'self'",
    ]
)

_CONTENT_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".mjs": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
    ".png": "image/png",
}

_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    # Older browsers that ignore frame-ancestors.
    "X-Frame-Options": "SAMEORIGIN",
    "Referrer-Policy": "no-referrer",
    "Cross-Origin-Opener-Policy": "same-origin",
    # Revalidated on every load (cheap with the ETag): an upgraded server's
    # page and scripts never mix with the previous version's.
    "Cache-Control": "no-cache",
}


@dataclass(frozen=True)
class _Asset:
    body: bytes
    content_type: str
    etag: str


def _load_assets() -> dict[str, _Asset]:
    """Every servable file of the console, by its path under the console directory."""
    root = resources.files("chatkit_server").joinpath("console")
    assets: dict[str, _Asset] = {}
    pending = [(root, "")]
    while pending:
        directory, prefix = pending.pop()
        for entry in directory.iterdir():
            name = prefix + entry.name
            if entry.is_dir():
                pending.append((entry, name + "/"))
                continue
            suffix = "." + entry.name.rsplit(".", 1)[-1] if "." in entry.name else ""
            content_type = _CONTENT_TYPES.get(suffix)
            if content_type is None:  # licences and notes ship, but are not served
                continue
            body = entry.read_bytes()
            etag = '"' + hashlib.sha256(body).hexdigest()[:32] + '"'
            assets[name] = _Asset(body=body, content_type=content_type, etag=etag)
    return assets


def _respond(request: Request, asset: _Asset) -> Response:
    headers = {**_HEADERS, "ETag": asset.etag}
    if asset.etag in _etags(request.headers.get("if-none-match", "")):
        return Response(status_code=304, headers=headers)
    return Response(asset.body, media_type=asset.content_type, headers=headers)


def _etags(header: str) -> set[str]:
    return {tag.strip().removeprefix("W/") for tag in header.split(",") if tag.strip()}


def console_routes() -> list[Route]:
    """The routes of the console: the page at ``/`` and its files under ``/console/``.

    Returns:
        Routes to mount on the app; an unknown file answers a JSON ``404``.
    """
    loaded = _load_assets()
    page = loaded["index.html"]

    async def index(request: Request) -> Response:
        return _respond(request, page)

    async def asset(request: Request) -> Response:
        found = loaded.get(request.path_params["path"])
        if found is None:
            return error_response(404, "No such console file.")
        return _respond(request, found)

    return [
        Route("/", index, methods=["GET"]),
        Route(CONSOLE_ASSET_PREFIX + "{path:path}", asset, methods=["GET"]),
    ]
