"""Thread items for tests that store or read a thread's history."""

from __future__ import annotations

from datetime import datetime

from chatkit.types import InferenceOptions, UserMessageItem, UserMessageTextContent

WHEN = datetime(2026, 1, 1)
"""When the items made here were created (a fixed time: tests compare them)."""


def user_message(
    thread_id: str, item_id: str, text: str, *, at: datetime = WHEN
) -> UserMessageItem:
    """A user's text message, with no attachments and default inference options."""
    return UserMessageItem(
        id=item_id,
        thread_id=thread_id,
        created_at=at,
        content=[UserMessageTextContent(text=text)],
        inference_options=InferenceOptions(),
    )
