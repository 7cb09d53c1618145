"""The per-request context handed to the ChatKit server and the store."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from chatkit_server.pace import Pace

__all__ = ["LOCAL_USER", "THREAD_WORKFLOW_KEY", "RequestContext", "SessionLimits", "StateValue"]

# With sign-in off the server has exactly one user: everyone who can reach
# it shares the same threads.
LOCAL_USER = "local"

THREAD_WORKFLOW_KEY = "workflow"
"""Key in a thread's (server-side, never sent) metadata naming the workflow that answers it."""

StateValue = str | int | float | bool
"""A workflow state variable's value (primitives only, as in hosted ChatKit)."""


@dataclass(frozen=True, kw_only=True)
class SessionLimits:
    """What a session's ``chatkit_configuration`` allows; the defaults allow everything.

    Attributes:
        titles: Whether new threads are named by a model-written title.
        uploads: Whether attachments may be created.
        max_file_bytes: Largest attachment, in bytes (``None``: the server's limit).
        max_files: Most attachments the session may create (``None``: no limit).
        files_since: When the session began (Unix seconds): attachments the
            user created from then on count towards ``max_files``.
        history: Whether earlier threads are listed.
        recent_threads: Most threads a listing shows, newest first (``None``: all).
    """

    titles: bool = True
    uploads: bool = True
    max_file_bytes: int | None = None
    max_files: int | None = None
    files_since: int | None = None
    history: bool = True
    recent_threads: int | None = None


_EMPTY: Mapping[str, StateValue] = MappingProxyType({})


@dataclass(frozen=True, kw_only=True)
class RequestContext:
    """Who is asking, and on behalf of which workflow.

    Every store query is scoped by ``user_id``: a thread owned by another user
    behaves exactly like a thread that does not exist.

    Attributes:
        user_id: The signed-in user (``local`` with sign-in off).
        workflow_id: The workflow a new thread gets (stored with it by its
            first write, see ``SQLStore.save_thread``).
        session_id: The session whose client secret signed the request.
        state_variables: The session's workflow state, for instructions and tools.
        limits: The session's configuration, enforced by the server.
        rate_subject: Whose requests the rate limit counts (``None``: not counted).
        rate_limit: Requests per minute allowed to ``rate_subject``.
        tracing: Whether the session lets its answers be traced (the server
            traces only when ``CHATKIT_TRACING`` is on as well).
        new_thread_id: The id ``threads.create`` gives its thread (chosen
            before the request runs: it names the thread's lease, and the
            answer asked before the thread is stored).
        pace: Links the request's answer to its client's reading speed
            (see :mod:`chatkit_server.pace`); one per request.
        base_url: This server's address as the requesting browser sees it
            (``CHATKIT_PUBLIC_URL``, else the request's own scheme, host and
            port): upload and preview links are built on it.
    """

    user_id: str = LOCAL_USER
    workflow_id: str = "default"
    session_id: str | None = None
    state_variables: Mapping[str, StateValue] = field(default_factory=lambda: _EMPTY)
    limits: SessionLimits = field(default_factory=SessionLimits)
    rate_subject: str | None = None
    rate_limit: int | None = None
    tracing: bool = True
    new_thread_id: str | None = None
    pace: Pace = field(default_factory=Pace, compare=False, repr=False)
    base_url: str | None = None
