"""A real browser for the console's tests: the system's Chromium driven by Playwright.

Never a browser downloaded at run time. Without Chromium or the ``playwright``
package the tests that ask for :func:`launch_browser` are skipped with the
reason, unless ``CHATKIT_REQUIRE_BROWSER=1`` (CI), which turns the skip into a
failure, as ``CHATKIT_REQUIRE_POSTGRES`` does for PostgreSQL.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, NoReturn
from urllib.parse import urlsplit

import pytest

if TYPE_CHECKING:
    from playwright.async_api import Browser, Page

REQUIRE_BROWSER = os.environ.get("CHATKIT_REQUIRE_BROWSER") == "1"
# Milliseconds Playwright waits for the page (streams here last a second or two).
TIMEOUT_MS = 10_000


def _skip_or_fail_browser(reason: str) -> NoReturn:
    if REQUIRE_BROWSER:
        pytest.fail(f"{reason} (CHATKIT_REQUIRE_BROWSER=1)", pytrace=False)
    pytest.skip(reason)


@asynccontextmanager
async def launch_browser(*, args: Sequence[str] = ()) -> AsyncIterator[Browser]:
    """Chromium, headless; skips (or fails) the test when it cannot run.

    Args:
        args: Extra command-line switches (e.g. a fake microphone).
    """
    try:
        from playwright.async_api import async_playwright
    except ImportError:
        _skip_or_fail_browser("the playwright package is not installed: pip install playwright")
    chromium = shutil.which("chromium")
    if chromium is None:
        _skip_or_fail_browser("Chromium is not installed: apt-get install chromium")
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=chromium, args=list(args))
        try:
            yield browser
        finally:
            await browser.close()


def origin(url: str) -> str:
    """``scheme://host:port`` of ``url``.

    A ``blob:`` URL (a preview of a picked file) has the origin of the page
    that made it, which its own URL names after the ``blob:``.
    """
    parts = urlsplit(url.removeprefix("blob:"))
    return f"{parts.scheme}://{parts.netloc}"


@dataclass
class Console:
    """A browser tab on the console, and everything it did.

    Attributes:
        page: The tab.
        origin: The server's origin.
        requests: Every URL the tab asked for.
        dialogs: Dialogs nobody expected (``answers`` is empty), each dismissed.
        answers: Texts for the next prompts and confirms, accepted in order.
        errors: Uncaught errors of the page's scripts, and errors it logged.
    """

    page: Page
    origin: str
    requests: list[str] = field(default_factory=list)
    dialogs: list[str] = field(default_factory=list)
    answers: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def on_console_message(self, message: Any) -> None:
        # An error the page logged; not the browser's own line for every
        # refused request (401 before signing in, 404 of a missing image).
        if message.type == "error" and not message.text.startswith("Failed to load resource"):
            self.errors.append(message.text)

    def assert_only_own_origin(self) -> None:
        foreign = [url for url in self.requests if origin(url) != self.origin]
        assert foreign == [], foreign

    def assert_clean(self) -> None:
        self.assert_only_own_origin()
        assert self.dialogs == [], self.dialogs
        assert self.errors == [], self.errors

    async def send(self, text: str) -> None:
        await self.page.get_by_test_id("composer-input").fill(text)
        await self.page.get_by_test_id("composer-send").click()

    async def answer_done(self) -> None:
        from playwright.async_api import expect

        # The feedback controls appear once the answer's item is done.
        await expect(self.page.locator(".message-actions").last).to_be_visible()


async def open_console(browser: Browser, url: str, *, ready: bool = True) -> Console:
    """A new tab (fresh storage) on the console at ``url``.

    Args:
        browser: The browser.
        url: The server's base URL.
        ready: Wait until the composer takes text (not when a sign-in dialog is expected).
    """
    from playwright.async_api import expect

    # A busy CI machine (two cores, other suites running) can be slow: wait
    # longer than Playwright's 5 s for the page's own assertions too.
    expect.set_options(timeout=TIMEOUT_MS)
    context = await browser.new_context()
    context.set_default_timeout(TIMEOUT_MS)
    page = await context.new_page()
    console = Console(page=page, origin=origin(url))
    page.on("request", lambda request: console.requests.append(request.url))
    page.on("pageerror", lambda error: console.errors.append(str(error)))
    page.on("console", console.on_console_message)

    async def on_dialog(dialog: Any) -> None:
        if console.answers:
            await dialog.accept(console.answers.pop(0))
            return
        console.dialogs.append(f"{dialog.type}: {dialog.message}")
        await dialog.dismiss()

    page.on("dialog", on_dialog)
    await page.goto(url)
    if ready:
        await expect(page.get_by_test_id("composer-input")).to_be_editable()
    return console
