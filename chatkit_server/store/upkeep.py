"""Background database upkeep of one process, run by the app's lifespan.

- renew this process's thread leases well before they run out;
- poll for sessions cancelled in other processes (see :mod:`.sessions`);
- once a minute, sweep old rate counts, lapsed leases and ended sessions,
  and (the app passes how) attachments never sent and orphaned bytes.

A failing database is logged once per outage, not on every tick.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Final

import anyio

from chatkit_server.errors import StoreError
from chatkit_server.store.gate import LEASE_SECONDS, RequestGate
from chatkit_server.store.sessions import POLL_SECONDS, SessionStore

__all__ = ["run_upkeep"]

logger = logging.getLogger(__name__)

# A renewal may be late by a busy database's round trip without the lease
# lapsing mid-answer.
RENEW_SECONDS: Final = LEASE_SECONDS / 4
SWEEP_SECONDS: Final = 60.0


async def run_upkeep(
    gate: RequestGate,
    sessions: SessionStore | None,
    attachments: Callable[[], Awaitable[None]] | None = None,
) -> None:
    """Run every upkeep loop until cancelled (each step also runs at once, on start).

    Args:
        gate: Whose leases to renew and rows to sweep.
        sessions: Where cancelled sessions are polled for (``None``: sessions are off).
        attachments: Sweeps unsent attachments and orphaned bytes.
    """
    async with anyio.create_task_group() as group:
        group.start_soon(_every, RENEW_SECONDS, "renewing thread leases", gate.renew)
        group.start_soon(_every, SWEEP_SECONDS, "sweeping old rows", _sweeper(gate, sessions))
        if attachments is not None:
            group.start_soon(_every, SWEEP_SECONDS, "sweeping attachments", attachments)
        if sessions is not None:
            group.start_soon(
                _every, POLL_SECONDS, "polling for cancelled sessions", sessions.poll_cancelled
            )


def _sweeper(gate: RequestGate, sessions: SessionStore | None) -> Callable[[], Awaitable[None]]:
    async def sweep() -> None:
        await gate.sweep()
        if sessions is not None:
            await sessions.sweep()

    return sweep


async def _every(seconds: float, what: str, step: Callable[[], Awaitable[None]]) -> None:
    failing = False
    while True:
        try:
            await step()
        except StoreError as exc:
            if not failing:
                logger.warning("database upkeep: %s failed (%s); retrying", what, exc)
            failing = True
        except Exception:
            # A bug, not an outage: say so with the traceback, and keep the
            # other loops (and this one) going rather than end them quietly.
            if not failing:
                logger.exception("database upkeep: %s failed unexpectedly; retrying", what)
            failing = True
        else:
            if failing:
                logger.info("database upkeep: %s works again", what)
            failing = False
        await anyio.sleep(seconds)
