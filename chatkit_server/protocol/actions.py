"""Running a widget action's handler for the ChatKit server, streamed or synchronous.

The handlers themselves, what they are given and their time limit live in
:mod:`chatkit_server.workflows.actions`; here their events become what each
kind of request answers: a stream (the base class keeps the items it carries)
or a JSON answer (the items are kept here). A handler's exception stays in the
server log; the user gets an error that names the action only.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncGenerator

from chatkit.store import Store
from chatkit.types import (
    ErrorEvent,
    ThreadItem,
    ThreadItemDoneEvent,
    ThreadItemRemovedEvent,
    ThreadItemReplacedEvent,
    ThreadStreamEvent,
)

from chatkit_server.context import RequestContext
from chatkit_server.errors import ChatKitServerError, RequestError
from chatkit_server.workflows.actions import (
    ActionClock,
    ActionContext,
    ActionHandler,
    ActionTimeout,
    handler_events,
)
from chatkit_server.workflows.registry import Workflow

__all__ = ["no_handler_message", "run_streamed_action", "run_sync_action"]

logger = logging.getLogger(__name__)


async def run_streamed_action(
    handler: ActionHandler, action: ActionContext, clock: ActionClock
) -> AsyncGenerator[ThreadStreamEvent, None]:
    """The handler's events as it yields them; a failure or timeout is an error event."""
    kind = action.action.type
    try:
        async with contextlib.aclosing(clock.run(handler_events(handler, action))) as events:
            async for event in events:
                yield event
    except ActionTimeout:
        logger.warning("the handler of action %r ran out of time", kind)
        yield ErrorEvent(code="custom", message=_too_slow(kind), allow_retry=True)
    except Exception:
        logger.exception("the handler of action %r failed", kind)
        yield ErrorEvent(code="custom", message=_failed(kind), allow_retry=True)


async def run_sync_action(
    handler: ActionHandler,
    action: ActionContext,
    clock: ActionClock,
    store: Store[RequestContext],
) -> ThreadItem | None:
    """Run the handler, keeping the items it adds, replaces or removes.

    Returns:
        The sender widget's replacement, if the handler made one.

    Raises:
        RequestError: The handler failed (502) or ran out of time (504). The
            items it stored until then stay: each was whole when kept.
    """
    kind, thread_id, context = action.action.type, action.thread.id, action.request_context
    sender = action.sender
    updated: ThreadItem | None = None
    try:
        async with contextlib.aclosing(clock.run(handler_events(handler, action))) as events:
            async for event in events:
                if isinstance(event, ThreadItemDoneEvent):
                    await store.add_thread_item(thread_id, event.item, context)
                elif isinstance(event, ThreadItemReplacedEvent):
                    await store.save_item(thread_id, event.item, context)
                    if sender is not None and event.item.id == sender.id:
                        updated = event.item
                elif isinstance(event, ThreadItemRemovedEvent):
                    await store.delete_thread_item(thread_id, event.item_id, context)
                else:
                    # Progress, notices, client effects: only a stream carries them.
                    logger.debug("sync action %r: dropped a %s event", kind, event.type)
    except ChatKitServerError:
        raise
    except ActionTimeout:
        logger.warning("the handler of action %r ran out of time", kind)
        raise RequestError(504, _too_slow(kind), code="action_timeout") from None
    except Exception:
        logger.exception("the handler of action %r failed", kind)
        raise RequestError(502, _failed(kind), code="action_failed") from None
    return updated


def no_handler_message(workflow: Workflow, action_type: str) -> str:
    """What a user is told of an action their thread's workflow has no handler for."""
    return (
        f"Workflow {workflow.id!r} has no handler for the action {action_type!r} "
        "(handlers are declared under actions in the workflows file)."
    )


def _failed(action_type: str) -> str:
    return f"The action {action_type!r} failed."


def _too_slow(action_type: str) -> str:
    return (
        f"The action {action_type!r} did not finish in time "
        "(CHATKIT_ACTION_MAX_SECONDS); the items it added so far are kept."
    )
