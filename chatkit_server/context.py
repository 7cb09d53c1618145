"""The per-request context handed to the ChatKit server and the store."""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["LOCAL_USER", "RecentReads", "RequestContext"]

# With authentication off the server has exactly one user: everyone who can
# reach it shares the same threads.
LOCAL_USER = "local"


@dataclass(eq=False)
class RecentReads:
    """What the store last read for this request, served to the next identical read once.

    The ChatKit server reads the same rows twice in a row on every message:
    the thread (our 4xx precheck, then the SDK's own load) and the newest
    items (the history for the model, then the SDK's look at the last two).
    Each read is a database round trip before the first token (about a
    millisecond on SQLite, measured by ``bench/``). A remembered read is
    served once and dropped, and any write to the thread drops it too, so it
    is never older than the read right before it in the same request. Stored
    JSON is kept, not objects, so a caller that changes what it was given
    changes nothing here.

    Attributes:
        threads: A thread's stored JSON, by thread id.
        newest_items: The first newest-first page of a thread's items as
            ``(id, type, JSON)`` rows, and whether more follow, by thread id.
    """

    threads: dict[str, str] = field(default_factory=dict)
    newest_items: dict[str, tuple[list[tuple[str, str, str]], bool]] = field(default_factory=dict)

    def forget(self, thread_id: str) -> None:
        """Drop what is remembered of a thread (it is being written)."""
        self.threads.pop(thread_id, None)
        self.newest_items.pop(thread_id, None)


@dataclass(frozen=True, kw_only=True)
class RequestContext:
    """Who is asking, and on behalf of which workflow.

    Every store query is scoped by ``user_id``: a thread owned by another user
    behaves exactly like a thread that does not exist.
    """

    user_id: str = LOCAL_USER
    workflow_id: str = "default"
    session_id: str | None = None
    # Set by the HTTP endpoint, one per request: a context that outlives its
    # request must not serve reads. Shared by the copies a request makes of
    # its context (dataclasses.replace).
    recent: RecentReads | None = field(default=None, compare=False, repr=False)
