"""Dictation: audio to text through an OpenAI-compatible ``/audio/transcriptions`` server.

The ChatKit composer records a short clip and sends it (``input.transcribe``);
the server forwards it, as OpenAI's speech-to-text API takes it (multipart: a
``file`` and a ``model``), to the server at ``CHATKIT_TRANSCRIBE_BASE_URL``: a
whisper.cpp server, vLLM serving a Whisper model, a LiteLLM proxy, or OpenAI.

The whole exchange, connecting included, is bounded by one deadline: a
transcription server that is down, stalled or slow becomes a
:class:`TranscriptionError` in bounded time, never a spinner. Errors name what
went wrong in words for the user; the server's own answer stays in the log.

A request is rare next to chat traffic, so each opens its own connection: no
client outlives it, and nothing needs closing at shutdown. The TLS settings
are built once per process, though: loading the CA bundle costs about 20 ms of
CPU, more than the rest of a short clip's round trip.
"""

from __future__ import annotations

import functools
import logging
import ssl
from dataclasses import dataclass
from typing import Final

import anyio
import httpx

from chatkit_server.errors import ChatKitServerError

__all__ = [
    "Transcriber",
    "TranscriptionError",
    "TranscriptionTimeout",
    "TranscriptionUnavailable",
]

logger = logging.getLogger(__name__)

# File names tell servers (whisper.cpp's ffmpeg, vLLM) the container format.
_EXTENSIONS: Final = {
    "audio/webm": "webm",
    "audio/ogg": "ogg",
    "audio/mp4": "mp4",
    "audio/mpeg": "mp3",
    "audio/wav": "wav",
    "audio/x-wav": "wav",
    "audio/flac": "flac",
}


@functools.cache
def _tls() -> ssl.SSLContext:
    # What httpx builds for verify=True (honouring SSL_CERT_FILE and
    # SSL_CERT_DIR as it finds them on first use), kept: a context is safe to
    # share between connections.
    return httpx.create_ssl_context()


class TranscriptionError(ChatKitServerError):
    """The transcription server gave no text.

    Attributes:
        message: What went wrong, written for the user (the server's own
            answer is only logged).
    """

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class TranscriptionUnavailable(TranscriptionError):
    """The transcription server cannot be reached, or answered with an error."""


class TranscriptionTimeout(TranscriptionError):
    """The transcription server did not answer in time."""


@dataclass(frozen=True, kw_only=True)
class Transcriber:
    """An OpenAI-compatible speech-to-text server.

    Attributes:
        base_url: The server's base URL, ``/v1`` included (``.../audio/transcriptions``
            is appended).
        model: The model name sent with every clip.
        api_key: Sent as a bearer token when set.
        timeout: Seconds the whole exchange may take.
    """

    base_url: str
    model: str
    api_key: str | None = None
    timeout: float = 30.0

    async def transcribe(self, audio: bytes, media_type: str) -> str:
        """The text spoken in ``audio`` (of MIME type ``media_type``, parameters allowed).

        Raises:
            TranscriptionTimeout: No answer within :attr:`timeout` seconds.
            TranscriptionUnavailable: The server is unreachable, answered an
                error status, or answered without text.
        """
        base_type = media_type.split(";", 1)[0].strip().lower()
        filename = f"audio.{_EXTENSIONS.get(base_type, 'webm')}"
        headers = {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}
        url = f"{self.base_url.rstrip('/')}/audio/transcriptions"
        try:
            with anyio.fail_after(self.timeout):
                async with httpx.AsyncClient(timeout=self.timeout, verify=_tls()) as client:
                    response = await client.post(
                        url,
                        headers=headers,
                        data={"model": self.model, "response_format": "json"},
                        files={"file": (filename, audio, base_type or "application/octet-stream")},
                    )
        except (TimeoutError, httpx.TimeoutException):
            raise TranscriptionTimeout(
                f"The transcription server did not answer within {self.timeout:g} seconds."
            ) from None
        except httpx.HTTPError as exc:
            logger.warning("transcription server %s unreachable: %r", url, exc)
            raise TranscriptionUnavailable("The transcription server cannot be reached.") from None
        if response.status_code >= 400:
            logger.warning(
                "transcription server %s answered %s: %s",
                url,
                response.status_code,
                response.text[:500],
            )
            raise TranscriptionUnavailable(
                f"The transcription server refused the audio (HTTP {response.status_code})."
            )
        return _text_of(response, url)


def _text_of(response: httpx.Response, url: str) -> str:
    """The ``text`` of a JSON answer (what every OpenAI-compatible server sends)."""
    try:
        body = response.json()
    except ValueError:
        body = None
    text = body.get("text") if isinstance(body, dict) else None
    if not isinstance(text, str):
        logger.warning(
            "transcription server %s answered without text: %s", url, response.text[:500]
        )
        raise TranscriptionUnavailable("The transcription server answered without any text.")
    return text.strip()
