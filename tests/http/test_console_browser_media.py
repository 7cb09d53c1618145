"""The console's attachments and dictation in a real browser.

As in ``test_console_browser.py``: a real uvicorn with the loopback fake
backend, the system's Chromium through Playwright. Files go through the
page's file input and the real two-phase upload route; dictation records
Chromium's fake microphone and goes through ``input.transcribe`` to a
loopback fake speech-to-text server.
"""

from __future__ import annotations

import base64
import json
import re
import struct
import zlib
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import urlsplit

import pytest

from chatkit_server.settings import Settings
from chatkit_server.testing.fake_backend import Reply
from chatkit_server.testing.live import serve_app
from tests.browser import REQUIRE_BROWSER, launch_browser, open_console
from tests.live import LOCAL, FakeLLM, LiveFactory
from tests.llm.test_transcription import FakeWhisper

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


# Chromium's own stand-ins: a microphone that plays a beep, allowed without asking.
FAKE_MICROPHONE = ("--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream")


@pytest.fixture
async def whisper() -> AsyncIterator[tuple[FakeWhisper, str]]:
    fake = FakeWhisper(text="book a table for two")
    async with serve_app(fake.app) as url:
        yield fake, url + "/v1"


async def test_dictation_records_the_microphone_and_puts_the_text_in_the_composer(
    start_live: LiveFactory,
    live_settings: Settings,
    fake_llm: FakeLLM,
    whisper: tuple[FakeWhisper, str],
) -> None:
    fake, url = whisper
    fake_llm.backend.script(Reply.text("Booked."))
    async with (
        launch_browser(args=FAKE_MICROPHONE) as browser,
        start_live(live_settings.with_changes(transcribe_base_url=url)) as live,
    ):
        console = await open_console(browser, live.url)
        page = console.page
        transcribes: list[Any] = []
        page.on(
            "request",
            lambda request: (
                transcribes.append(json.loads(request.post_data or "{}"))
                if request.url.endswith("/chatkit")
                and "input.transcribe" in (request.post_data or "")
                else None
            ),
        )
        composer = page.get_by_test_id("composer-input")
        await composer.fill("Please")
        button = page.get_by_test_id("composer-dictate")
        await expect(button).to_be_visible()
        await expect(button).to_have_attribute("aria-pressed", "false")

        await button.click()
        await expect(button).to_have_attribute("aria-pressed", "true")
        await expect(button).to_have_accessible_name("Stop dictation")
        await page.wait_for_timeout(700)  # some of the fake microphone's beep
        await button.click()

        await expect(composer).to_have_value("Please book a table for two")
        await expect(button).to_have_accessible_name("Dictate")
        await expect(button).to_be_enabled()
        [request] = transcribes
        assert request["type"] == "input.transcribe"
        assert set(request["params"]) == {"audio_base64", "mime_type"}
        assert request["params"]["mime_type"].startswith("audio/webm")
        [received] = fake.received
        audio = base64.b64decode(request["params"]["audio_base64"])
        assert received["audio"] == audio
        assert audio.startswith(b"\x1aE\xdf\xa3")  # a WebM (EBML) file, not an empty clip
        assert received["content_type"] == "audio/webm"

        # The transcript is only a draft: the user sends it.
        await page.get_by_test_id("composer-send").click()
        await expect(page.get_by_test_id("message-user")).to_have_text(
            "Please book a table for two"
        )
        await expect(page.get_by_test_id("message-assistant")).to_have_text("Booked.")

        # A failing speech-to-text server: its message shows, the composer keeps its text.
        fake.status = 500
        await composer.fill("Draft")
        await button.click()
        await expect(button).to_have_attribute("aria-pressed", "true")
        await page.wait_for_timeout(300)
        await button.click()
        await expect(page.locator("#status")).to_contain_text(
            "The transcription server refused the audio"
        )
        await expect(button).to_be_enabled()
        await expect(composer).to_have_value("Draft")
        assert len(fake.received) == 2
        console.assert_clean()


async def test_the_microphone_is_hidden_when_the_server_has_no_dictation(
    browser: Browser, start_live: LiveFactory, live_settings: Settings
) -> None:
    async with start_live(live_settings) as live:
        console = await open_console(browser, live.url)
        await expect(console.page.locator("body[data-ready=true]")).to_be_attached()
        microphone = console.page.get_by_test_id("composer-dictate")
        await expect(microphone).to_have_count(1)
        await expect(microphone).to_be_hidden()
        workflows = await console.page.evaluate(
            "fetch('chatkit/workflows').then((response) => response.json())"
        )
        assert workflows["dictation"] is False
        console.assert_clean()


async def test_a_text_file_has_no_preview_and_reaches_the_model_as_text(
    browser: Browser, start_live: LiveFactory, live_settings: Settings, fake_llm: FakeLLM
) -> None:
    fake_llm.backend.script(Reply.text("Friday it is."))
    async with start_live(live_settings) as live:
        console = await open_console(browser, live.url)
        page = console.page
        await page.get_by_test_id("attach-input").set_input_files(
            {"name": "notes.txt", "mimeType": "text/plain", "buffer": b"Ship it on Friday.\n"}
        )
        pending = page.locator("#attachments .attachment")
        await expect(pending).to_have_class("attachment ready")
        await expect(pending).to_contain_text("notes.txt")
        await expect(pending.locator("img")).to_have_count(0)

        await console.send("When do we ship?")
        await expect(page.get_by_test_id("message-assistant")).to_have_text("Friday it is.")
        await expect(page.get_by_test_id("message-user")).to_contain_text("notes.txt")
        texts = [part["text"] for part in _user_content(fake_llm.backend.requests[-1].body)]
        assert any("notes.txt" in text and "Ship it on Friday." in text for text in texts), texts
        console.assert_clean()


async def test_an_upload_address_on_another_origin_is_refused_with_a_reason(
    browser: Browser, start_live: LiveFactory, live_settings: Settings
) -> None:
    # CHATKIT_PUBLIC_URL names another address than the one the page was opened at.
    settings = live_settings.with_changes(public_url="http://127.0.0.2:9")
    async with start_live(settings) as live:
        console = await open_console(browser, live.url)
        page = console.page
        bodies: list[Any] = []
        page.on(
            "request",
            lambda request: (
                bodies.append(json.loads(request.post_data or "null") or {})
                if request.url.endswith("/chatkit")
                else None
            ),
        )
        await page.get_by_test_id("attach-input").set_input_files(
            {"name": "red.png", "mimeType": "image/png", "buffer": _png()}
        )
        await expect(page.locator("#attachments .attachment")).to_have_class("attachment failed")
        await expect(page.locator("#status")).to_contain_text(
            "CHATKIT_PUBLIC_URL should be the address this page is opened at"
        )
        # Nothing was sent elsewhere, and the half-made attachment was deleted.
        console.assert_clean()
        deleted = [body for body in bodies if body.get("type") == "attachments.delete"]
        assert len(deleted) == 1, bodies


async def test_no_microphone_is_said_plainly(
    browser: Browser,
    start_live: LiveFactory,
    live_settings: Settings,
    whisper: tuple[FakeWhisper, str],
) -> None:
    fake, url = whisper
    # This browser has neither the fake microphone nor leave to use one.
    async with start_live(live_settings.with_changes(transcribe_base_url=url)) as live:
        console = await open_console(browser, live.url)
        page = console.page
        button = page.get_by_test_id("composer-dictate")
        await button.click()
        await expect(page.locator("#status")).to_contain_text("The microphone is not available")
        await expect(button).to_have_attribute("aria-pressed", "false")
        await expect(button).to_be_enabled()
        assert fake.received == []
        console.assert_clean()
