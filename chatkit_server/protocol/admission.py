"""Admission: the rate limit and one answer per thread, before anything runs.

Every request that writes counts against its user's or session's limit
(reads do not: opening the history panel must not use up a user's
messages). A request that starts an answer takes its thread's lease; a
second answer on a thread that is still answering gets a 409 before any
stream starts, in every worker process and replica (the lease is a row).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import replace
from typing import Any, Final

import anyio
from chatkit.types import (
    ChatKitReq,
    ItemsListReq,
    ThreadsAddClientToolOutputReq,
    ThreadsAddStructuredInputReq,
    ThreadsAddUserMessageReq,
    ThreadsCreateReq,
    ThreadsCustomActionReq,
    ThreadsGetByIdReq,
    ThreadsListReq,
    ThreadsRetryAfterItemReq,
)

from chatkit_server.context import RequestContext
from chatkit_server.errors import RequestError, StoreError
from chatkit_server.store.gate import LEASE_SECONDS, Lease, RequestGate
from chatkit_server.store.ids import ID_PREFIXES, new_id
from chatkit_server.store.statements import thread_not_found
from chatkit_server.store.tables import ID_LENGTH

__all__ = ["RELEASE_SECONDS", "admit", "lease_new_thread", "release"]

logger = logging.getLogger(__name__)

# Reads: not counted against the rate limit.
_READS: Final = (ThreadsGetByIdReq, ThreadsListReq, ItemsListReq)

_ANSWERS_ON_THREAD: Final = (
    ThreadsAddUserMessageReq,
    ThreadsAddClientToolOutputReq,
    ThreadsAddStructuredInputReq,
    ThreadsRetryAfterItemReq,
    ThreadsCustomActionReq,
)

# A lease held by an answer that is sending its last events is released a
# moment later: a client that sends its next request on the last event
# (before the response ends) waits this long rather than get a 409.
_BUSY_RETRIES: Final = (0.05, 0.1, 0.2)

RELEASE_SECONDS: Final = 5.0
"""Upper bound for releasing a lease after its answer ends (the client may be gone)."""


async def admit(
    gate: RequestGate, request: ChatKitReq, context: RequestContext, *, newest_items: int = 0
) -> tuple[RequestContext, Lease | None]:
    """Count ``request`` and lease its thread if it starts an answer.

    A new thread's lease is taken here only if the request is counted as
    well (one statement does both); otherwise the caller takes it with
    :func:`lease_new_thread` once the request is ready to answer.
    ``newest_items``: how many of the thread's newest items the answer
    will read, to be read with the lease where that saves a statement
    (see :meth:`RequestGate.admit`).

    Returns:
        The context (with the id of a thread ``threads.create`` will make)
        and the lease, which the caller must release.

    Raises:
        RequestError: 429 over the rate limit, 409 the thread is answering.
        NotFoundError: The thread does not exist for this user.
    """
    subject = None if isinstance(request, _READS) else context.rate_subject
    thread_id: str | None = None
    new_thread = isinstance(request, ThreadsCreateReq)
    if new_thread:
        thread_id = new_id(ID_PREFIXES["thread"])
        context = replace(context, new_thread_id=thread_id)
    elif isinstance(request, _ANSWERS_ON_THREAD):
        thread_id = request.params.thread_id
        if len(thread_id) > ID_LENGTH:
            # No thread has such an id, and no lease row could name it
            # (PostgreSQL refuses the value; SQLite would store it).
            raise thread_not_found(thread_id)
    if subject is None and (thread_id is None or new_thread):
        return context, None
    admission = await gate.admit(
        subject=subject,
        limit=context.rate_limit,
        thread_id=thread_id,
        user_id=context.user_id,
        new_thread=new_thread,
        newest_items=newest_items,
    )
    if (
        subject is not None
        and context.rate_limit is not None
        and admission.count > context.rate_limit
    ):
        raise RequestError(
            429,
            f"Rate limit reached: {context.rate_limit} requests a minute. "
            f"Try again in {admission.retry_after} s.",
            code="rate_limit_exceeded",
            headers={"Retry-After": str(admission.retry_after)},
        )
    if thread_id is None or admission.lease is not None:
        return context, admission.lease
    if not await gate.thread_exists(thread_id, context.user_id):
        raise thread_not_found(thread_id)
    for delay in _BUSY_RETRIES:
        await anyio.sleep(delay)
        lease = await gate.lease_again(thread_id, context.user_id)
        if lease is not None:
            return context, lease
    raise RequestError(
        409,
        "This thread is still answering; wait for the answer to finish (or stop it) first.",
        code="thread_busy",
    )


async def lease_new_thread(gate: RequestGate, context: RequestContext) -> Lease | None:
    """The lease of the thread ``threads.create`` is making, if :func:`admit` did not take it.

    No other request can contend for it: the thread's id is the server's
    own, and no one learns it before the request's first event. So it can
    wait until the model is asked, out of the way of the time to the
    first token (a write, and on SQLite a hand-off to the writer thread).
    """
    if context.new_thread_id is None:
        return None
    admission = await gate.admit(
        subject=None,
        limit=None,
        thread_id=context.new_thread_id,
        user_id=context.user_id,
        new_thread=True,
    )
    if admission.lease is None:  # only an id taken twice could do this
        raise RequestError(409, "The new thread's id is in use; send the message again.")
    return admission.lease


async def release(gate: RequestGate, lease: Lease, usage: Mapping[str, Any] | None = None) -> None:
    """Release ``lease``, even in a cancelled task, within :data:`RELEASE_SECONDS`.

    ``usage``: the answer's token usage, recorded with the release (see
    :meth:`RequestGate.release`). A failure is logged, not raised: the
    lease then runs out by itself.
    """
    with anyio.CancelScope(shield=True, deadline=anyio.current_time() + RELEASE_SECONDS):
        try:
            await gate.release(lease, usage)
        except StoreError as exc:
            logger.warning(
                "could not release the answer lease of thread %s (%s); it runs out in %d s%s",
                lease.thread_id,
                exc,
                LEASE_SECONDS,
                "" if usage is None else ", and the answer's token usage is not recorded",
            )
