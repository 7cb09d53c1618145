"""The per-request context handed to the ChatKit server and the store."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["LOCAL_USER", "RequestContext"]

# With authentication off the server has exactly one user: everyone who can
# reach it shares the same threads.
LOCAL_USER = "local"


@dataclass(frozen=True, kw_only=True)
class RequestContext:
    """Who is asking, and on behalf of which workflow.

    Every store query is scoped by ``user_id``: a thread owned by another user
    behaves exactly like a thread that does not exist.
    """

    user_id: str = LOCAL_USER
    workflow_id: str = "default"
    session_id: str | None = None
