"""Fixtures of the HTTP tests: a real browser for the console's."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

import pytest

from tests.browser import launch_browser

if TYPE_CHECKING:
    from playwright.async_api import Browser


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    """Chromium through Playwright (skipped, or failed in CI, when missing)."""
    async with launch_browser() as running:
        yield running
