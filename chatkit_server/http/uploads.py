"""Attachment uploads and previews: the routes beside ``/chatkit``.

- ``POST|PUT /chatkit/attachments/{id}/upload``: the second phase of a
  two-phase upload (``uploadStrategy: {type: "two_phase"}``), at the URL
  ``attachments.create`` answered: multipart with a ``file`` field for
  ``POST``, the raw bytes for ``PUT``. The attachment is then saved again
  without its ``upload_descriptor``: it is uploaded. That URL is signed
  (:mod:`chatkit_server.files.links`) and works as a presigned one: it
  needs no credential (ChatKit may send none) and any page may use it,
  since only the attachment's owner was given it. Without the signature
  the route signs in and checks the page's origin as ``/chatkit`` does.
- ``POST /chatkit/attachments``: a direct upload (``uploadStrategy: {type:
  "direct", uploadUrl}``), multipart with a ``file`` field; creates the
  attachment and answers its JSON.
- ``GET /chatkit/attachments/{id}/preview``: an image, for a signed link
  (:mod:`chatkit_server.files.links`); the ChatKit iframe loads it from
  another origin without credentials.

Uploads sign in as ``/chatkit`` does (or carry a signed link), refuse
foreign pages as it does, and name only the user's own attachments
(another user's is a 404 exactly like a missing one). Bytes stream to
storage with a running count: past the limit the answer is a 413 at once,
and nothing is kept.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import replace
from pathlib import PurePosixPath, PureWindowsPath
from typing import Final

from chatkit.types import Attachment, AttachmentCreateParams, AttachmentsCreateReq
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from chatkit_server.context import RequestContext
from chatkit_server.errors import NotFoundError, RequestError, StoreError
from chatkit_server.files import check_file_id, effective_mime_type, is_image
from chatkit_server.files.receive import IncomingFile
from chatkit_server.http.errors import error_response, failure_response, request_error_response
from chatkit_server.http.multipart import MultipartFile, boundary_of
from chatkit_server.http.origin import refuse_foreign_origin
from chatkit_server.http.state import AppState, get_state
from chatkit_server.protocol.admission import admit
from chatkit_server.store.attachments import attachment_owner
from chatkit_server.store.ids import ID_PREFIXES

__all__ = ["MULTIPART_OVERHEAD_BYTES", "public_base_url", "upload_routes"]

logger = logging.getLogger(__name__)

MULTIPART_OVERHEAD_BYTES: Final = 64 * 1024
"""Room for a multipart body's boundaries and headers beyond the file's own bytes."""

_MAX_NAME_CHARS: Final = 255
# A preview link's image may be cached by the browser this long at most.
_PREVIEW_CACHE_SECONDS: Final = 3600


def public_base_url(request: Request, public_url: str | None) -> str:
    """The server's address as the browser sees it: ``CHATKIT_PUBLIC_URL``, else the request's.

    The request's own scheme, host and port (as its ``Host`` header names
    them), so links work on whatever address and port the server runs.
    """
    if public_url is not None:
        return public_url
    return str(request.base_url).rstrip("/")


async def _signed_in(request: Request, state: AppState) -> RequestContext:
    refused = refuse_foreign_origin(request, state.settings.cors_origins)
    if refused is not None:
        raise _Refused(refused)
    context = await state.auth.authenticate(request)
    return replace(context, base_url=public_base_url(request, state.settings.public_url))


class _Refused(Exception):
    def __init__(self, response: Response) -> None:
        self.response = response


def _limit(state: AppState, context: RequestContext, attachment: Attachment | None = None) -> int:
    """The server's size limit, tightened by the session's (now, or at the attachment's making)."""
    limit = state.settings.max_upload_bytes
    if context.limits.max_file_bytes is not None:
        limit = min(limit, context.limits.max_file_bytes)
    made_with = (attachment.metadata or {}).get("max_bytes") if attachment else None
    if isinstance(made_with, int):
        limit = min(limit, made_with)
    return limit


def _refuse_large_body(request: Request, limit: int) -> None:
    declared = request.headers.get("content-length")
    if declared is None:
        return
    if not declared.isdigit():
        raise RequestError(400, "Malformed Content-Length header.")
    if int(declared) > limit:
        raise RequestError(
            413, f"The file is larger than the limit of {limit} bytes.", code="too_large"
        )


async def _counted(body: AsyncIterator[bytes], limit: int) -> AsyncIterator[bytes]:
    """A multipart body, refused once past the file limit plus its overhead."""
    received = 0
    async for chunk in body:
        received += len(chunk)
        if received > limit + MULTIPART_OVERHEAD_BYTES:
            raise RequestError(
                413, f"The file is larger than the limit of {limit} bytes.", code="too_large"
            )
        yield chunk


def _attachment_json(attachment: Attachment) -> Response:
    # As the ChatKit server serializes attachments: without server-side metadata.
    body = attachment.model_dump_json(
        by_alias=True, exclude_none=True, context={"exclude_metadata": True}
    )
    return Response(body, media_type="application/json")


def _clean_name(name: str | None) -> str:
    """A client's file name as a display name only: no directories, no control characters."""
    if not name:
        return "file"
    name = PureWindowsPath(PurePosixPath(name).name).name
    name = "".join(ch for ch in name if ch.isprintable()).strip()
    return name[:_MAX_NAME_CHARS] or "file"


_Work = Callable[[Request, AppState], Awaitable[Response]]


async def _answer(request: Request, work: _Work) -> Response:
    """Run the route's ``work``, mapping every failure to a JSON answer."""
    state = get_state(request)
    try:
        return await work(request, state)
    except _Refused as refused:
        return refused.response
    except RequestError as exc:
        return request_error_response(exc)
    except NotFoundError:
        return error_response(404, "No such attachment.", code="not_found")
    except Exception as exc:
        # A client that left mid-upload leaves nothing behind either.
        return failure_response(exc, "receiving an upload")


async def two_phase_upload(request: Request) -> Response:
    """``POST`` (multipart ``file``) or ``PUT`` (raw bytes) of an attachment's bytes."""
    return await _answer(request, _two_phase)


async def direct_upload(request: Request) -> Response:
    """``POST`` multipart ``file``: create an attachment with its bytes, answer its JSON."""
    return await _answer(request, _direct)


async def _link_context(
    request: Request, state: AppState, attachment_id: str
) -> RequestContext | None:
    """The owner's context when the request carries the signed upload link, else ``None``.

    Raises:
        NotFoundError: The link is signed, but not for this attachment (or expired).
    """
    expires = request.query_params.get("expires")
    signature = request.query_params.get("signature")
    if expires is None or signature is None:
        return None
    found = await attachment_owner(state.database, attachment_id)
    if found is None or not state.signer.verify(
        attachment_id, found[0], expires, signature, action="upload"
    ):
        raise NotFoundError("No such attachment.")
    return RequestContext(
        user_id=found[0], base_url=public_base_url(request, state.settings.public_url)
    )


async def _two_phase(request: Request, state: AppState) -> Response:
    attachment_id = check_file_id(request.path_params["attachment_id"])
    context = await _link_context(request, state, attachment_id)
    signed = context is not None
    if context is None:
        context = await _signed_in(request, state)
    attachment = await state.store.load_attachment(attachment_id, context)
    if attachment.upload_descriptor is None:
        raise RequestError(
            409, "This attachment is already uploaded; create a new one.", code="already_uploaded"
        )
    limit = _limit(state, context, attachment)
    if request.method == "PUT":
        _refuse_large_body(request, limit)
        source: AsyncIterator[bytes] = request.stream()
    else:
        _refuse_large_body(request, limit + MULTIPART_OVERHEAD_BYTES)
        form = MultipartFile(
            _counted(request.stream(), limit), boundary_of(request.headers.get("content-type", ""))
        )
        await form.open()
        source = form.chunks()
    incoming = IncomingFile(source, limit=limit, allowed_types=state.settings.upload_types)
    size = await state.files.save(attachment_id, incoming)
    uploaded = state.store.links.new_attachment(
        attachment_id,
        name=attachment.name,
        mime_type=effective_mime_type(incoming.mime_type, attachment.mime_type),
        context=context,
        metadata={**(attachment.metadata or {}), "size": size},
    ).model_copy(update={"thread_id": attachment.thread_id})
    try:
        await state.store.finish_upload(uploaded, context)
    except NotFoundError:
        # Deleted while its bytes were arriving: it stays deleted.
        await state.files.delete([attachment_id])
        raise
    response = _attachment_json(uploaded)
    if signed:
        # The link is the credential: the page that holds it may read the answer.
        response.headers["Access-Control-Allow-Origin"] = "*"
    return response


async def _direct(request: Request, state: AppState) -> Response:
    context = await _signed_in(request, state)
    limit = _limit(state, context)
    boundary = boundary_of(request.headers.get("content-type", ""))
    _refuse_large_body(request, limit + MULTIPART_OVERHEAD_BYTES)
    # As attachments.create: counted against the rate limit, within the
    # session's upload settings. The size is checked as the bytes arrive.
    placeholder = AttachmentsCreateReq(
        params=AttachmentCreateParams(name="file", size=0, mime_type="application/octet-stream")
    )
    context, _ = await admit(state.gate, placeholder, context)
    await state.server.checks.check(placeholder, context)
    form = MultipartFile(_counted(request.stream(), limit), boundary)
    await form.open()
    declared = form.content_type or "application/octet-stream"
    attachment_id = state.store.generate_attachment_id(declared, context)
    incoming = IncomingFile(form.chunks(), limit=limit, allowed_types=state.settings.upload_types)
    size = await state.files.save(attachment_id, incoming)
    attachment = state.store.links.new_attachment(
        attachment_id,
        name=_clean_name(form.filename),
        mime_type=effective_mime_type(incoming.mime_type, declared),
        context=context,
        metadata={"size": size},
    )
    try:
        await state.store.save_attachment(attachment, context)
    except BaseException:
        await state.files.delete([attachment_id])
        raise
    return _attachment_json(attachment)


async def preview(request: Request) -> Response:
    """An image attachment's bytes, for a signed link that has not expired.

    No sign-in: the link is the credential (the ChatKit iframe sends none).
    Every refusal is the same 404, so links cannot be probed.
    """
    state = get_state(request)
    not_found = error_response(404, "No such image, or its link has expired.", code="not_found")
    attachment_id = request.path_params["attachment_id"]
    expires = request.query_params.get("expires", "")
    signature = request.query_params.get("signature", "")
    if not attachment_id.startswith(ID_PREFIXES["attachment"]):
        return not_found
    try:
        check_file_id(attachment_id)
        found = await attachment_owner(state.database, attachment_id)
        if found is None:
            return not_found
        owner, attachment = found
        if (
            not state.signer.verify(attachment_id, owner, expires, signature)
            or attachment.upload_descriptor is not None
            or not is_image(attachment.mime_type)
        ):
            return not_found
        chunks = state.files.stream(attachment_id)
        first = await anext(chunks, b"")
    except NotFoundError:
        return not_found
    except StoreError:
        logger.exception("store failure while serving a preview")
        return error_response(503, "The database is unavailable. Please try again.")

    async def body() -> AsyncIterator[bytes]:
        yield first
        async for chunk in chunks:
            yield chunk

    cache = max(0, min(_PREVIEW_CACHE_SECONDS, int(expires) - int(time.time())))
    return StreamingResponse(
        body(),
        media_type=attachment.mime_type,
        headers={
            # The link is the credential: any page holding it may read the image.
            "Access-Control-Allow-Origin": "*",
            "Cross-Origin-Resource-Policy": "cross-origin",
            "Cache-Control": f"private, max-age={cache}",
            "X-Content-Type-Options": "nosniff",
            "Content-Security-Policy": "default-src 'none'; sandbox",
        },
    )


def upload_routes() -> list[Route]:
    """The upload and preview routes, for the app's route list."""
    return [
        Route("/chatkit/attachments", direct_upload, methods=["POST"]),
        Route(
            "/chatkit/attachments/{attachment_id}/upload",
            two_phase_upload,
            methods=["POST", "PUT"],
        ),
        Route("/chatkit/attachments/{attachment_id}/preview", preview, methods=["GET"]),
    ]
