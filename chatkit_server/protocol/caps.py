"""Caps on one answer: its length in characters and its wall time.

A backend that never stops (a looping model, a broken server) must not
stream forever, nor leave a message of megabytes in the thread that every
later turn sends back to the model. Past a cap the answer ends: the text so
far is kept (cut exactly at the character cap), the run is stopped, and the
user is told why in a ``notice`` event.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import anyio
from chatkit.types import (
    AssistantMessageContentPartTextDelta,
    NoticeEvent,
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
        self, events: AsyncIterator[ThreadStreamEvent]
    ) -> AsyncIterator[ThreadStreamEvent]:
        """``events`` up to the first cap; a text delta that crosses it is cut to fit.

        ``events`` is closed when a cap ends it, so the run's readers stop.
        """
        try:
            async for event in events:
                if self._deadline is not None and anyio.current_time() >= self._deadline:
                    self.reached = "time"
                    return
                update = _text_delta(event) if self.max_chars else None
                if update is not None:
                    room = self.max_chars - self._chars
                    self._chars += len(update.delta)
                    if len(update.delta) > room:
                        if room > 0:
                            cut = update.model_copy(update={"delta": update.delta[:room]})
                            yield event.model_copy(update={"update": cut})
                        self.reached = "length"
                        return
                yield event
        finally:
            close = getattr(events, "aclose", None)
            if close is not None:
                await close()

    def notice(self) -> NoticeEvent | None:
        """What the user is told when the answer was cut; ``None`` when it was not."""
        if self.reached == "length":
            return NoticeEvent(
                level="warning",
                title="Answer cut short",
                message=(
                    f"The answer reached this server's limit of {self.max_chars} characters "
                    "and was stopped there."
                ),
            )
        if self.reached == "time":
            return NoticeEvent(
                level="warning",
                title="Answer cut short",
                message=(
                    f"The answer took longer than this server's limit of "
                    f"{self.max_seconds:g} seconds and was stopped."
                ),
            )
        return None


def _text_delta(event: ThreadStreamEvent) -> AssistantMessageContentPartTextDelta | None:
    if isinstance(event, ThreadItemUpdatedEvent) and isinstance(
        event.update, AssistantMessageContentPartTextDelta
    ):
        return event.update
    return None
