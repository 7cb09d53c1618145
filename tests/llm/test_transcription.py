"""Dictation against a loopback fake speech-to-text server (OpenAI's multipart shape).

The client side (:class:`Transcriber`) and the whole path over real HTTP:
``input.transcribe`` to chatkit-server, on to the fake, and back; the fake
down, slow, failing, and dictation not configured at all.
"""

from __future__ import annotations

import asyncio
import base64
import json
import socket
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from chatkit_server.llm.transcription import (
    Transcriber,
    TranscriptionTimeout,
    TranscriptionUnavailable,
)
from chatkit_server.settings import Settings, SettingsError
from chatkit_server.testing.live import serve_app
from tests.live import LiveFactory

AUDIO = b"\x1aE\xdf\xa3 not really webm, but bytes all the same"


@dataclass
class FakeWhisper:
    """What a whisper.cpp or vLLM server does with ``POST /v1/audio/transcriptions``."""

    text: str = "hello from the microphone"
    delay: float = 0.0
    status: int = 200
    body: str | None = None  # sent verbatim instead of {"text": ...}
    received: list[dict[str, Any]] = field(default_factory=list)

    async def transcriptions(self, request: Request) -> Response:
        # The context closes the uploaded file's temporary storage.
        async with request.form() as form:
            upload = form["file"]
            assert not isinstance(upload, str)
            self.received.append(
                {
                    "model": form.get("model"),
                    "filename": upload.filename,
                    "content_type": upload.content_type,
                    "audio": await upload.read(),
                    "authorization": request.headers.get("authorization"),
                }
            )
        await asyncio.sleep(self.delay)
        if self.body is not None:
            return PlainTextResponse(self.body, status_code=self.status)
        if self.status >= 400:
            return JSONResponse({"error": {"message": "bad audio"}}, status_code=self.status)
        return JSONResponse({"text": f" {self.text} "})

    @property
    def app(self) -> Starlette:
        return Starlette(
            routes=[Route("/v1/audio/transcriptions", self.transcriptions, methods=["POST"])]
        )


@pytest.fixture
async def whisper() -> AsyncIterator[tuple[FakeWhisper, str]]:
    fake = FakeWhisper()
    async with serve_app(fake.app) as url:
        yield fake, url + "/v1"


def _closed_port_url() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    # Nothing listens there any more: connecting is refused at once.
    return f"http://127.0.0.1:{port}/v1"


# -- the client ------------------------------------------------------------------


async def test_audio_goes_out_as_openai_sends_it(whisper: tuple[FakeWhisper, str]) -> None:
    fake, url = whisper
    transcriber = Transcriber(base_url=url, model="whisper-large-v3", api_key="k-123")

    text = await transcriber.transcribe(AUDIO, "audio/ogg;codecs=opus")

    assert text == "hello from the microphone"
    [sent] = fake.received
    assert sent == {
        "model": "whisper-large-v3",
        "filename": "audio.ogg",
        "content_type": "audio/ogg",
        "audio": AUDIO,
        "authorization": "Bearer k-123",
    }


async def test_no_key_sends_no_authorization(whisper: tuple[FakeWhisper, str]) -> None:
    fake, url = whisper
    await Transcriber(base_url=url, model="m").transcribe(AUDIO, "audio/webm")
    assert fake.received[0]["authorization"] is None
    assert fake.received[0]["filename"] == "audio.webm"


async def test_a_server_that_is_down_fails_at_once() -> None:
    transcriber = Transcriber(base_url=_closed_port_url(), model="m", timeout=10)
    started = time.monotonic()
    with pytest.raises(TranscriptionUnavailable, match="cannot be reached"):
        await transcriber.transcribe(AUDIO, "audio/webm")
    assert time.monotonic() - started < 5


async def test_a_slow_server_fails_within_the_timeout(whisper: tuple[FakeWhisper, str]) -> None:
    fake, url = whisper
    fake.delay = 2.0
    started = time.monotonic()
    with pytest.raises(TranscriptionTimeout, match=r"within 0\.5 seconds"):
        await Transcriber(base_url=url, model="m", timeout=0.5).transcribe(AUDIO, "audio/webm")
    assert time.monotonic() - started < 2


@pytest.mark.parametrize(
    ("status", "body", "message"),
    [
        (400, None, r"refused the audio \(HTTP 400\)"),
        (500, None, r"refused the audio \(HTTP 500\)"),
        (200, "not json", "without any text"),
        (200, json.dumps({"transcript": "x"}), "without any text"),
    ],
)
async def test_error_answers_are_unavailable(
    whisper: tuple[FakeWhisper, str], status: int, body: str | None, message: str
) -> None:
    fake, url = whisper
    fake.status, fake.body = status, body
    with pytest.raises(TranscriptionUnavailable, match=message):
        await Transcriber(base_url=url, model="m").transcribe(AUDIO, "audio/webm")


# -- input.transcribe over HTTP ----------------------------------------------------


def _request(audio: bytes, mime_type: str = "audio/webm") -> str:
    params = {"audio_base64": base64.b64encode(audio).decode(), "mime_type": mime_type}
    return json.dumps({"type": "input.transcribe", "params": params})


async def test_dictation_round_trip(
    start_live: LiveFactory, live_settings: Settings, whisper: tuple[FakeWhisper, str]
) -> None:
    fake, url = whisper
    settings = live_settings.with_changes(
        transcribe_base_url=url, transcribe_model="base.en", transcribe_api_key="secret-key"
    )
    async with start_live(settings) as live, httpx.AsyncClient() as http:
        response = await live.client.post_raw(_request(AUDIO, "audio/mp4"))
        listed = (await http.get(live.url + "/chatkit/workflows")).json()

    assert response.status_code == 200
    assert response.json() == {"text": "hello from the microphone"}
    assert listed["dictation"] is True  # the front end shows the microphone
    [sent] = fake.received
    assert (sent["model"], sent["filename"], sent["audio"]) == ("base.en", "audio.mp4", AUDIO)
    assert sent["authorization"] == "Bearer secret-key"


async def test_dictation_errors_are_clear_and_bounded(
    start_live: LiveFactory, live_settings: Settings, whisper: tuple[FakeWhisper, str]
) -> None:
    fake, url = whisper
    fake.delay = 2.0
    slow = live_settings.with_changes(transcribe_base_url=url, transcribe_timeout=0.5)
    down = live_settings.with_changes(transcribe_base_url=_closed_port_url())
    small = live_settings.with_changes(transcribe_base_url=url, transcribe_max_bytes=16)

    async with start_live(slow) as live:
        started = time.monotonic()
        timed_out = await live.client.post_raw(_request(AUDIO))
        assert time.monotonic() - started < 3
    async with start_live(down) as live:
        unreachable = await live.client.post_raw(_request(AUDIO))
    async with start_live(small) as live:
        too_big = await live.client.post_raw(_request(AUDIO))

    assert timed_out.status_code == 504
    assert timed_out.json()["error"]["code"] == "transcription_timeout"
    assert unreachable.status_code == 502
    assert unreachable.json()["error"]["message"] == "The transcription server cannot be reached."
    assert too_big.status_code == 413
    assert "16 bytes" in too_big.json()["error"]["message"]
    assert len(fake.received) == 1  # the clip over the limit never left


async def test_dictation_not_configured_says_how_to_turn_it_on(
    start_live: LiveFactory, live_settings: Settings
) -> None:
    async with start_live(live_settings) as live, httpx.AsyncClient() as http:
        response = await live.client.post_raw(_request(AUDIO))
        listed = (await http.get(live.url + "/chatkit/workflows")).json()

    assert listed["dictation"] is False  # the front end hides the microphone
    assert response.status_code == 501
    error = response.json()["error"]
    assert error["code"] == "dictation_not_configured"
    assert "CHATKIT_TRANSCRIBE_BASE_URL" in error["message"]


def test_transcription_settings_come_from_the_environment() -> None:
    settings = Settings.from_env(
        {
            "CHATKIT_TRANSCRIBE_BASE_URL": "http://127.0.0.1:8178/v1/",
            "CHATKIT_TRANSCRIBE_MODEL": "large-v3",
            "CHATKIT_TRANSCRIBE_API_KEY": "k",
            "CHATKIT_TRANSCRIBE_TIMEOUT": "12.5",
            "CHATKIT_TRANSCRIBE_MAX_BYTES": "1000",
        }
    )
    assert (
        settings.transcribe_base_url,
        settings.transcribe_model,
        settings.transcribe_api_key,
        settings.transcribe_timeout,
        settings.transcribe_max_bytes,
    ) == ("http://127.0.0.1:8178/v1", "large-v3", "k", 12.5, 1000)
    assert Settings.from_env({}).transcribe_base_url is None
    with pytest.raises(SettingsError, match="CHATKIT_TRANSCRIBE_BASE_URL"):
        Settings.from_env({"CHATKIT_TRANSCRIBE_BASE_URL": "127.0.0.1:8178"})
    with pytest.raises(SettingsError, match="CHATKIT_TRANSCRIBE_TIMEOUT"):
        Settings.from_env({"CHATKIT_TRANSCRIBE_TIMEOUT": "0"})
