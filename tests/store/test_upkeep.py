"""The upkeep loops keep going through failures and log each outage once."""

from __future__ import annotations

import logging

import anyio
import pytest

from chatkit_server.errors import StoreError
from chatkit_server.store import upkeep


async def test_a_failing_step_is_logged_once_and_retried(
    caplog: pytest.LogCaptureFixture,
) -> None:
    calls: list[int] = []

    async def step() -> None:
        calls.append(1)
        if len(calls) <= 3:
            raise StoreError("cannot reach the database")
        if len(calls) == 4:
            raise RuntimeError("a bug")

    caplog.set_level(logging.INFO, logger=upkeep.__name__)
    with anyio.move_on_after(1):
        await upkeep._every(0.01, "testing", step)  # noqa: SLF001

    assert len(calls) > 5
    messages = [record.getMessage() for record in caplog.records]
    assert messages[0] == ("database upkeep: testing failed (cannot reach the database); retrying")
    assert messages.count(messages[0]) == 1
    assert "works again" in messages[-1]
