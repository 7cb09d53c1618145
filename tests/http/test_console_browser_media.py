"""The console's attachments and dictation in a real browser.

As in ``test_console_browser.py``: a real uvicorn with the loopback fake
backend, the system's Chromium through Playwright. Files go through the
page's file input and the real two-phase upload route; dictation records
Chromium's fake microphone and goes through ``input.transcribe`` to a
loopback fake speech-to-text server.
"""

from __future__ import annotations

import base64
import re
import struct
import zlib
from typing import Any
from urllib.parse import urlsplit

import pytest

from chatkit_server.settings import Settings
from chatkit_server.testing.fake_backend import Reply
from tests.browser import REQUIRE_BROWSER, open_console
from tests.live import LOCAL, FakeLLM, LiveFactory

if not REQUIRE_BROWSER:  # in CI a missing package fails the run instead
    pytest.importorskip("playwright", reason="the playwright package is not installed")
from playwright.async_api import Browser, expect  # noqa: E402


def _png(width: int = 2, height: int = 2) -> bytes:
    """A small valid PNG (red pixels): the server sniffs what it stores."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    rows = b"".join(b"\x00" + b"\xff\x00\x00" * width for _ in range(height))
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(rows))
        + chunk(b"IEND", b"")
    )


def _user_content(body: Any) -> list[Any]:
    """The content parts of the last user message of a Chat Completions request."""
    [*_, last] = [message for message in body["messages"] if message["role"] == "user"]
    content = last["content"]
    return [{"type": "text", "text": content}] if isinstance(content, str) else list(content)


async def test_an_image_is_previewed_uploaded_sent_and_reaches_the_model(
    browser: Browser, start_live: LiveFactory, live_settings: Settings, fake_llm: FakeLLM
) -> None:
    fake_llm.backend.script(Reply.text("A red square."))
    image = _png()
    async with start_live(live_settings.with_changes(llm_vision=True)) as live:
        console = await open_console(browser, live.url)
        page = console.page
        uploads: list[tuple[str, str]] = []
        page.on(
            "request",
            lambda request: (
                uploads.append((request.method, request.url))
                if "/chatkit/attachments/" in request.url
                else None
            ),
        )
        await page.get_by_test_id("attach-input").set_input_files(
            {"name": "red.png", "mimeType": "image/png", "buffer": image}
        )
        pending = page.locator("#attachments .attachment")
        await expect(pending).to_have_count(1)
        # The preview is the picked file itself, before (and while) it uploads.
        preview = pending.locator("img")
        await expect(preview).to_have_attribute("src", re.compile(r"^blob:"))
        assert await preview.evaluate("img => img.complete && img.naturalWidth") == 2
        await expect(pending).to_have_class("attachment ready")

        await console.send("What is in this picture?")
        await expect(page.get_by_test_id("message-assistant")).to_have_text("A red square.")
        await expect(page.locator("#attachments .attachment")).to_have_count(0)
        # The sent message shows the image too, from the server's preview link.
        shown = page.get_by_test_id("message-user").locator("img")
        await expect(shown).to_have_attribute("alt", "red.png")
        await expect(shown).to_have_js_property("naturalWidth", 2)

        # The bytes went to the server's own upload URL (the page may talk to no one else).
        assert [method for method, _ in uploads[:1]] == ["POST"]
        assert urlsplit(uploads[0][1]).path.endswith("/upload")
        sent = _user_content(fake_llm.backend.requests[-1].body)
        images = [part for part in sent if part["type"] == "image_url"]
        assert [part["image_url"]["url"] for part in images] == [
            "data:image/png;base64," + base64.b64encode(image).decode()
        ]
        assert any("What is in this picture?" in part.get("text", "") for part in sent)
        stored = await live.store.load_threads(10, None, "desc", LOCAL)
        assert len(stored.data) == 1
        console.assert_clean()
