"""Caps on one answer: its length in characters and its wall time.

A backend that never stops (a looping model, a broken server) must not
stream forever, nor leave a message of megabytes in the thread that every
later turn sends back to the model. Past a cap the answer ends: the text so
far is kept (cut exactly at the character cap), the run is stopped, and the
user is told why in a ``notice`` event.

The run is stopped rather than the event stream closed: ChatKit's
``stream_agent_response`` then ends as it does for any run that ends (its
helper tasks finish), and what was still on its way is dropped here, but for
the ends of items other than the answer (a finished thought is kept).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable

import anyio
from chatkit.types import (
    AssistantMessageContentPartTextDelta,
    AssistantMessageItem,
    NoticeEvent,
    ThreadItemDoneEvent,
    ThreadItemUpdatedEvent,
    ThreadStreamEvent,
)

__all__ = ["AnswerCaps"]


class AnswerCaps:
    """The caps of one answer and, once one was reached, which.

    Args:
        max_chars: Most characters of answer text; 0 for no cap.
        max_seconds: Most seconds from the start of the answer; 0 for no cap.
    """

    def __init__(self, *, max_chars: int, max_seconds: float) -> None:
        self.max_chars = max_chars
        self.max_seconds = max_seconds
        self._chars = 0
        self._deadline = anyio.current_time() + max_seconds if max_seconds > 0 else None
        self.reached: str | None = None
        """``"length"`` or ``"time"`` once the answer was cut; else ``None``."""

    async def apply(
        self, events: AsyncIterator[ThreadStreamEvent], stop: Callable[[], object]
    ) -> AsyncIterator[ThreadStreamEvent]:
        """``events`` up to the first cap; a text delta that crosses it is cut to fit.

        Args:
            events: The run's ChatKit events.
            stop: Stops the run (its events then come to an end).
        """
        async for event in events:
            if self.reached is not None:
                if _kept_after_the_cap(event):
                    yield event
                continue
            if self._deadline is not None and anyio.current_time() >= self._deadline:
                self.reached = "time"
                stop()
                continue
            update = _text_delta(event) if self.max_chars else None
            if update is not None:
                room = self.max_chars - self._chars
                self._chars += len(update.delta)
                if len(update.delta) > room:
                    if room > 0:
                        cut = update.model_copy(update={"delta": update.delta[:room]})
                        yield event.model_copy(update={"update": cut})
                    self.reached = "length"
                    stop()
                    continue
            yield event

    def notice(self) -> NoticeEvent | None:
        """What the user is told when the answer was cut; ``None`` when it was not."""
        if self.reached == "length":
            why = (
                f"reached this server's limit of {self.max_chars} characters and was stopped there"
            )
        elif self.reached == "time":
            why = (
                f"took longer than this server's limit of {self.max_seconds:g} seconds "
                "and was stopped"
            )
        else:
            return None
        return NoticeEvent(level="warning", title="Answer cut short", message=f"The answer {why}.")


def _kept_after_the_cap(event: ThreadStreamEvent) -> bool:
    """The end of an item other than an answer (whose end is made from the text sent)."""
    return isinstance(event, ThreadItemDoneEvent) and not isinstance(
        event.item, AssistantMessageItem
    )


def _text_delta(event: ThreadStreamEvent) -> AssistantMessageContentPartTextDelta | None:
    if isinstance(event, ThreadItemUpdatedEvent) and isinstance(
        event.update, AssistantMessageContentPartTextDelta
    ):
        return event.update
    return None
