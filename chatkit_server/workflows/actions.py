"""Widget actions: the handlers a workflows file names, and what they are given.

A widget's button (or form) sends an action ``{"type": ..., "payload": ...}``. A
workflow maps action types to handlers in the workflows file::

    [workflows.assistant]
    actions = { "counter.add" = "chatkit_server.tools:add_to_counter" }

ChatKit sends the action as ``threads.custom_action`` when the widget's
``ActionConfig.streaming`` is true (the default) and as
``threads.sync_custom_action`` otherwise; both reach the same handler, an
``async def`` taking one :class:`ActionContext`. A handler that is an async
generator yields ChatKit stream events, most easily built with the context's
helpers::

    async def add_to_counter(action: ActionContext) -> AsyncIterator[ThreadStreamEvent]:
        count = action.action.payload["count"] + 1
        yield action.progress("Counting…")
        yield action.replace_widget(counter_widget(count))    # kept: shows after a reload
        yield action.notice(f"The count is {count}.")

A plain ``async def`` may return nothing, or a list of events.

What a streamed handler yields reaches the browser as it is yielded, and items
are kept on the way: a ``thread.item.done`` adds an item, a
``thread.item.replaced`` saves it again (the only way a changed widget is kept:
``thread.item.updated`` events are never stored). ``action.respond()`` runs
the workflow's agent on the thread as it now is; add what the agent should know
first, e.g. ``yield action.hidden_context("The user pressed Approve.")``.

A synchronous action has no stream: its handler runs the same way (with
:attr:`ActionContext.sync` true), items it adds, replaces or removes are kept,
the sender widget's replacement is the answer's ``updated_item``, and events
that only a stream can carry (progress, notices, client effects) are dropped.

A handler has a bounded time (``CHATKIT_ACTION_MAX_SECONDS``, see
:class:`ActionClock`); an answer it runs with ``action.respond()`` does not
count against it, having bounds of its own.
"""

from __future__ import annotations

import contextlib
import inspect
import math
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal, TypeAlias, TypeVar

import anyio
from chatkit.actions import Action
from chatkit.icons import IconName
from chatkit.store import Store, StoreItemType
from chatkit.types import (
    AssistantMessageContent,
    AssistantMessageItem,
    ClientEffectEvent,
    HiddenContextItem,
    NoticeEvent,
    ProgressUpdateEvent,
    ThreadItemDoneEvent,
    ThreadItemReplacedEvent,
    ThreadMetadata,
    ThreadStreamEvent,
    WidgetItem,
)
from chatkit.widgets import WidgetRoot

from chatkit_server.context import RequestContext

__all__ = [
    "ActionClock",
    "ActionTimeout",
    "ActionContext",
    "ActionHandler",
    "handler_events",
    "is_action_handler",
]

ActionHandler: TypeAlias = Callable[["ActionContext"], Any]
"""An ``async def handler(action: ActionContext)``, a generator of events or not."""


def is_action_handler(obj: object) -> bool:
    """Whether ``obj`` can be an action handler: an async function or async generator."""
    return inspect.iscoroutinefunction(obj) or inspect.isasyncgenfunction(obj)


@dataclass(kw_only=True)
class ActionContext:
    """One action on its way to its handler, with helpers to answer it.

    Attributes:
        action: The action: its ``type`` and ``payload`` (what the widget declared).
        sender: The widget item the action came from, when it came from one.
        thread: The thread's metadata (a changed title is saved after the action).
        request_context: The caller (user, session, workflow).
        store: The store, for handlers that look up or keep more.
        sync: True for ``threads.sync_custom_action`` (no stream to send on).
        agent: Starts the workflow's answer for :meth:`respond` (set by the
            server; ``None`` in a synchronous action).
    """

    action: Action[str, Any]
    sender: WidgetItem | None
    thread: ThreadMetadata
    request_context: RequestContext
    store: Store[RequestContext]
    sync: bool = False
    agent: Callable[[], AsyncIterator[ThreadStreamEvent]] | None = None

    def new_id(self, kind: StoreItemType = "message") -> str:
        """A new item id from the store."""
        return self.store.generate_item_id(kind, self.thread, self.request_context)

    def replace_widget(
        self, widget: WidgetRoot, copy_text: str | None = None
    ) -> ThreadItemReplacedEvent:
        """The sender widget item with a new widget: shown at once and kept.

        Raises:
            ValueError: The action did not come from a widget item.
        """
        if self.sender is None:
            raise ValueError(f"action {self.action.type!r} has no sender widget to replace")
        update: dict[str, Any] = {"widget": widget}
        if copy_text is not None:
            update["copy_text"] = copy_text
        return ThreadItemReplacedEvent(item=self.sender.model_copy(update=update))

    def add_widget(self, widget: WidgetRoot, copy_text: str | None = None) -> ThreadItemDoneEvent:
        """A new widget item at the end of the thread."""
        return ThreadItemDoneEvent(
            item=WidgetItem(
                id=self.new_id("message"),
                thread_id=self.thread.id,
                created_at=_now(),
                widget=widget,
                copy_text=copy_text,
            )
        )

    def add_message(self, text: str) -> ThreadItemDoneEvent:
        """A new assistant message at the end of the thread."""
        return ThreadItemDoneEvent(
            item=AssistantMessageItem(
                id=self.new_id("message"),
                thread_id=self.thread.id,
                created_at=_now(),
                content=[AssistantMessageContent(text=text)],
            )
        )

    def hidden_context(self, text: str) -> ThreadItemDoneEvent:
        """An item the model reads in the thread's history and the user never sees."""
        return ThreadItemDoneEvent(
            item=HiddenContextItem(
                id=self.new_id("message"),
                thread_id=self.thread.id,
                created_at=_now(),
                content=text,
            )
        )

    @staticmethod
    def progress(text: str, icon: IconName | None = None) -> ProgressUpdateEvent:
        """A transient progress line (replaced by the next event, never kept)."""
        return ProgressUpdateEvent(text=text, icon=icon)

    @staticmethod
    def notice(
        message: str,
        level: Literal["info", "warning", "danger"] = "info",
        title: str | None = None,
    ) -> NoticeEvent:
        """A notice (toast) for the user; ``message`` may use markdown."""
        return NoticeEvent(message=message, level=level, title=title)

    @staticmethod
    def client_effect(name: str, data: dict[str, Any] | None = None) -> ClientEffectEvent:
        """An event for the front end's ``onEffect`` handler (nothing is kept)."""
        return ClientEffectEvent(name=name, data=data or {})

    def respond(self) -> AsyncIterator[ThreadStreamEvent]:
        """Run the workflow's agent on the thread as it is now; yield its events on.

        Raises:
            RuntimeError: In a synchronous action, which has no stream to answer on.
        """
        if self.sync or self.agent is None:
            raise RuntimeError("a synchronous action cannot run the agent: it has no stream")
        return self.agent()


async def handler_events(
    handler: ActionHandler, context: ActionContext
) -> AsyncGenerator[ThreadStreamEvent, None]:
    """The events of one run of ``handler``, whichever of the two shapes it has."""
    if inspect.isasyncgenfunction(handler):
        async for event in handler(context):
            yield event
        return
    result: Awaitable[Iterable[ThreadStreamEvent] | None] = handler(context)
    for event in await result or ():
        yield event


_T = TypeVar("_T")


class ActionTimeout(Exception):
    """A handler used up its time (:class:`ActionClock`)."""


class ActionClock:
    """The time a handler has left, stopped while an answer it runs is streaming.

    A handler is the operator's code: one that hangs must not hold its request
    (and, streamed, its thread's lease) forever. The answer a handler runs
    (``action.respond()``) is bounded on its own (answer length and time, the
    backend's timeouts), so its time is not the handler's.

    Args:
        seconds: The handler's time; 0 or less: no limit.
    """

    def __init__(self, seconds: float) -> None:
        self._left = seconds if seconds > 0 else math.inf
        self._scope: anyio.CancelScope | None = None
        self._since = 0.0
        self._answering = False

    async def next(self, events: AsyncIterator[_T]) -> _T:
        """The next of ``events``, within the time left.

        Raises:
            StopAsyncIteration: ``events`` ended.
            ActionTimeout: The time ran out first.
        """
        with anyio.CancelScope() as scope:
            self._scope = scope
            self._since = anyio.current_time()
            self._arm()
            try:
                return await anext(events)
            finally:
                self._spend()
                self._scope = None
        raise ActionTimeout  # only our own deadline is caught by this scope

    async def run(self, events: AsyncGenerator[_T, None]) -> AsyncGenerator[_T, None]:
        """``events``, each within the time left (see :meth:`next`); closed when this is.

        Raises:
            ActionTimeout: The time ran out before the next event.
        """
        async with contextlib.aclosing(events):
            while True:
                try:
                    event = await self.next(events)
                except StopAsyncIteration:
                    return
                # Yielded outside the deadline's scope: what the consumer does
                # with an event is not the handler's time.
                yield event

    async def excluding(self, answer: AsyncIterator[_T]) -> AsyncIterator[_T]:
        """``answer``'s events, with the clock stopped while it streams."""
        self._spend()
        self._answering = True
        self._arm()
        try:
            async for event in answer:
                yield event
        finally:
            self._answering = False
            self._since = anyio.current_time()
            self._arm()

    def _spend(self) -> None:
        now = anyio.current_time()
        if not self._answering:
            self._left -= now - self._since
        self._since = now

    def _arm(self) -> None:
        if self._scope is not None:
            self._scope.deadline = math.inf if self._answering else self._since + self._left


def _now() -> datetime:
    # Naive local time, as the ChatKit SDK stamps every item it makes.
    return datetime.now()  # noqa: DTZ005
