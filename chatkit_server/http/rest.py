"""The OpenAI ChatKit REST API under ``/v1/chatkit``, for the operator's backend.

``openai.AsyncOpenAI(base_url="http://host:8000/v1", api_key=CHATKIT_ADMIN_KEY).beta.chatkit``
works against these routes unchanged. Every request needs
``Authorization: Bearer <CHATKIT_ADMIN_KEY>``; without an admin key the REST
API is off and every route answers 404 saying so.

OpenAI's routes (shapes in :mod:`.rest_shapes` and :mod:`.rest_sessions`):

- ``POST /v1/chatkit/sessions``, ``POST /v1/chatkit/sessions/{id}/cancel``;
- ``GET /v1/chatkit/threads`` (``user``, ``limit``, ``order``, ``after``, ``before``);
- ``GET`` and ``DELETE /v1/chatkit/threads/{id}``;
- ``GET /v1/chatkit/threads/{id}/items`` (``limit``, ``order``, ``after``, ``before``).

Extensions, in the same list shape (``object: "list"``, ``data``,
``first_id``, ``last_id``, ``has_more``):

- ``GET /v1/chatkit/feedback`` (``user``, ``thread_id``, ``limit``,
  ``order``, ``after``, ``before``): the votes of the thumbs up/down buttons;
- ``GET /v1/chatkit/usage`` (``user``, ``thread_id``, ``group_by`` =
  ``thread`` or ``user``, ``limit``): token totals, biggest first.

Cursors read in the listing's order (see :mod:`chatkit_server.store.admin`):
``after=last_id`` is the next page, ``before=first_id`` the previous one.
Every answer is JSON, errors in the OpenAI shape.
"""

from __future__ import annotations

import hmac
import logging
from collections.abc import Awaitable, Callable
from typing import Any, Final, Literal

from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Mount, Route

from chatkit_server.context import RequestContext
from chatkit_server.errors import InvalidCursorError, NotFoundError, RequestError, StoreError
from chatkit_server.http.body import read_body
from chatkit_server.http.errors import error_response, failure_response, request_error_response
from chatkit_server.http.rest_sessions import cancel_session, create_session
from chatkit_server.http.rest_shapes import (
    REST_ITEM_TYPES,
    feedback_object,
    item_object,
    list_object,
    thread_object,
    usage_object,
)
from chatkit_server.http.state import AppState, get_state
from chatkit_server.http.uploads import public_base_url
from chatkit_server.store.admin import AdminStore, Order
from chatkit_server.store.attachments import has_image
from chatkit_server.store.ids import has_control_character

__all__ = [
    "DEFAULT_LIST_LIMIT",
    "DEFAULT_USAGE_LIMIT",
    "MAX_LIST_LIMIT",
    "MAX_USAGE_LIMIT",
    "REST_PREFIX",
    "rest_routes",
]

logger = logging.getLogger(__name__)

REST_PREFIX: Final = "/v1/chatkit"
DEFAULT_LIST_LIMIT: Final = 20
MAX_LIST_LIMIT: Final = 100
DEFAULT_USAGE_LIMIT: Final = 100
MAX_USAGE_LIMIT: Final = 1000

_CHALLENGE: Final = {"WWW-Authenticate": 'Bearer realm="chatkit-admin"'}

_Handler = Callable[[Request, AppState], Awaitable[dict[str, Any]]]


def _admin(handler: _Handler) -> Callable[[Request], Awaitable[Response]]:
    """An endpoint that runs ``handler`` for the operator, every failure a JSON error."""

    async def endpoint(request: Request) -> Response:
        state = get_state(request)
        admin_key = state.settings.admin_key
        if admin_key is None or state.sessions is None:
            return error_response(
                404,
                "The REST API is off: set CHATKIT_ADMIN_KEY (at least 32 characters) "
                "to turn it on, then send it as 'Authorization: Bearer <key>'.",
                code="rest_api_off",
            )
        # Checked before the body is read: nothing is done for a stranger.
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(
            token.strip().encode(), admin_key.encode()
        ):
            return error_response(
                401,
                "Send the admin key as 'Authorization: Bearer <CHATKIT_ADMIN_KEY>'.",
                code="invalid_api_key",
                headers=_CHALLENGE,
            )
        refused = _odd_ids(request)
        if refused is not None:
            return refused
        try:
            return JSONResponse(await handler(request, state))
        except RequestError as exc:
            return request_error_response(exc)
        except NotFoundError:
            thread_id = request.path_params.get("thread_id", "")
            return error_response(404, f"No thread {thread_id!r}.", code="not_found")
        except InvalidCursorError:
            return error_response(
                400,
                "The 'after' or 'before' cursor does not name an entry of this list.",
                code="invalid_cursor",
            )
        except (ClientDisconnect, StoreError) as exc:
            return failure_response(exc, "answering a REST request")

    endpoint.__name__ = handler.__name__
    endpoint.__doc__ = handler.__doc__
    return endpoint


def _odd_ids(request: Request) -> Response | None:
    """An id or cursor with a control character: answered as an unknown one, unqueried."""
    for name, value in request.path_params.items():
        if isinstance(value, str) and has_control_character(value):
            what = "session" if name == "session_id" else "thread"
            return error_response(404, f"No {what} {value!r}.", code="not_found")
    for name, value in request.query_params.items():
        if not has_control_character(value):
            continue
        if name in ("after", "before"):
            return error_response(
                400,
                "The 'after' or 'before' cursor does not name an entry of this list.",
                code="invalid_cursor",
            )
        return error_response(400, f"Invalid '{name}': it holds a control character.")
    return None


# -- query parameters ----------------------------------------------------------


def _text(request: Request, name: str) -> str | None:
    value = request.query_params.get(name)
    if value is not None and value == "":
        raise RequestError(400, f"Invalid '{name}': must not be empty.")
    return value


def _limit(request: Request, default: int, maximum: int) -> int:
    value = request.query_params.get("limit")
    if value is None:
        return default
    try:
        limit = int(value)
    except ValueError:
        raise RequestError(400, f"Invalid 'limit': expected an integer, got {value!r}.") from None
    if not 1 <= limit <= maximum:
        raise RequestError(400, f"Invalid 'limit': must be from 1 to {maximum}, got {limit}.")
    return limit


def _choice(request: Request, name: str, choices: tuple[str, ...]) -> str:
    value = request.query_params.get(name, choices[0])
    if value not in choices:
        raise RequestError(
            400, f"Invalid '{name}': expected {' or '.join(choices)}, got {value!r}."
        )
    return value


def _page_params(request: Request) -> dict[str, Any]:
    order: Order = "asc" if _choice(request, "order", ("desc", "asc")) == "asc" else "desc"
    return {
        "limit": _limit(request, DEFAULT_LIST_LIMIT, MAX_LIST_LIMIT),
        "order": order,
        "after": _text(request, "after"),
        "before": _text(request, "before"),
    }


# -- sessions ------------------------------------------------------------------


async def create(request: Request, state: AppState) -> dict[str, Any]:
    """``POST /v1/chatkit/sessions``: a ``chatkit.session`` with its client secret."""
    assert state.sessions is not None  # checked by _admin
    body = await read_body(
        request, state.settings.max_body_bytes, within=state.settings.body_timeout
    )
    return await create_session(
        body, sessions=state.sessions, workflows=state.server.workflows, settings=state.settings
    )


async def cancel(request: Request, state: AppState) -> dict[str, Any]:
    """``POST /v1/chatkit/sessions/{session_id}/cancel``: the session, cancelled."""
    assert state.sessions is not None  # checked by _admin
    return await cancel_session(request.path_params["session_id"], sessions=state.sessions)


# -- threads -------------------------------------------------------------------


async def list_threads(request: Request, state: AppState) -> dict[str, Any]:
    """``GET /v1/chatkit/threads``: every user's threads, or ``user``'s."""
    page = await AdminStore(state.database).threads(
        user_id=_text(request, "user"), **_page_params(request)
    )
    return list_object(page.data, page.has_more, thread_object)


async def thread(request: Request, state: AppState) -> dict[str, Any]:
    """``GET /v1/chatkit/threads/{thread_id}``: one ``chatkit.thread``; ``DELETE``: delete it.

    Deleting takes the thread's items, attachments, feedback and usage with it.
    """
    thread_id = request.path_params["thread_id"]
    admin = AdminStore(state.database)
    if request.method == "GET":
        return thread_object(await admin.thread(thread_id))
    await admin.delete_thread(thread_id)
    return {"id": thread_id, "object": "chatkit.thread.deleted", "deleted": True}


async def list_items(request: Request, state: AppState) -> dict[str, Any]:
    """``GET /v1/chatkit/threads/{thread_id}/items``: the items that have a REST form.

    Image previews get links that work now (stored ones expire), signed for
    the thread's owner and built on the address this request came to.
    """
    admin = AdminStore(state.database)
    thread_id = request.path_params["thread_id"]
    page = await admin.items(thread_id, types=REST_ITEM_TYPES, **_page_params(request))
    items = page.data
    # The owner is looked up only when there is a link to renew.
    if any(has_image(item) for item in items):
        owner = RequestContext(
            user_id=(await admin.thread(thread_id)).user_id,
            base_url=public_base_url(request, state.settings.public_url),
        )
        items = [state.store.links.fresh_item(item, owner) for item in items]
    return list_object(items, page.has_more, item_object)


# -- extensions ----------------------------------------------------------------


async def list_feedback(request: Request, state: AppState) -> dict[str, Any]:
    """``GET /v1/chatkit/feedback``: feedback votes, newest first (an extension)."""
    page = await AdminStore(state.database).feedback(
        user_id=_text(request, "user"),
        thread_id=_text(request, "thread_id"),
        **_page_params(request),
    )
    return list_object(page.data, page.has_more, feedback_object)


async def usage_report(request: Request, state: AppState) -> dict[str, Any]:
    """``GET /v1/chatkit/usage``: token totals per thread or per user (an extension)."""
    limit = _limit(request, DEFAULT_USAGE_LIMIT, MAX_USAGE_LIMIT)
    by: Literal["thread", "user"] = (
        "user" if _choice(request, "group_by", ("thread", "user")) == "user" else "thread"
    )
    rows = await state.server.usage.report(
        user_id=_text(request, "user"),
        thread_id=_text(request, "thread_id"),
        limit=limit + 1,  # one more, to know has_more
        by=by,
    )
    return {
        "object": "list",
        "data": [usage_object(row) for row in rows[:limit]],
        "has_more": len(rows) > limit,
    }


def rest_routes() -> list[BaseRoute]:
    """The REST API's routes, to mount in the app."""
    return [
        Mount(
            REST_PREFIX,
            routes=[
                Route("/sessions", _admin(create), methods=["POST"]),
                Route("/sessions/{session_id}/cancel", _admin(cancel), methods=["POST"]),
                Route("/threads", _admin(list_threads), methods=["GET"]),
                # One route for both methods, so that a 405 names both.
                Route("/threads/{thread_id}", _admin(thread), methods=["GET", "DELETE"]),
                Route("/threads/{thread_id}/items", _admin(list_items), methods=["GET"]),
                Route("/feedback", _admin(list_feedback), methods=["GET"]),
                Route("/usage", _admin(usage_report), methods=["GET"]),
            ],
        )
    ]
