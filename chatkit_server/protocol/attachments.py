"""Attachments as the model sees them.

- an image: the image itself as a ``data:`` URL when the workflow's model
  has vision (``vision = true``, ``CHATKIT_LLM_VISION=on``); otherwise its
  name and type, and that the model cannot see it;
- text (txt, md, csv, json, source code): its content, with its name;
- a PDF: its text (:mod:`chatkit_server.files.pdf`), with its name;
- anything else: its name and type.

Content is cut to ``max_chars`` characters with a note that says so, so a
long file never fills the model's context, and is never cut silently.
Extracted PDF text is kept for the next turns (an uploaded attachment never
changes: a second upload is refused).
"""

from __future__ import annotations

import base64
import logging
from collections import OrderedDict
from typing import Final

import anyio.to_thread
from chatkit.types import Attachment
from openai.types.responses import (
    ResponseInputContentParam,
    ResponseInputImageParam,
    ResponseInputTextParam,
)

from chatkit_server.errors import NotFoundError, StoreError
from chatkit_server.files import FileStorage, is_image
from chatkit_server.files.pdf import UnreadablePdf, pdf_text
from chatkit_server.files.sniff import PDF, is_text

__all__ = ["MAX_IMAGE_BYTES", "attachment_content"]

logger = logging.getLogger(__name__)

MAX_IMAGE_BYTES: Final = 8 * 1024 * 1024
"""Largest image sent to a model (most APIs refuse bigger ones)."""

_PDF_CACHE_SIZE: Final = 64


class _PdfCache:
    """Extracted PDF texts by attachment id, the most recently used kept."""

    def __init__(self) -> None:
        self._texts: OrderedDict[str, str] = OrderedDict()

    def get(self, attachment_id: str) -> str | None:
        text = self._texts.get(attachment_id)
        if text is not None:
            self._texts.move_to_end(attachment_id)
        return text

    def put(self, attachment_id: str, text: str) -> None:
        self._texts[attachment_id] = text
        if len(self._texts) > _PDF_CACHE_SIZE:
            self._texts.popitem(last=False)


_PDF_TEXTS = _PdfCache()


def _decode(data: bytes) -> str:
    return data.decode("utf-8", "replace")


def _text(text: str) -> ResponseInputTextParam:
    return ResponseInputTextParam(type="input_text", text=text)


def _cut(content: str, max_chars: int) -> tuple[str, str]:
    """``content`` within ``max_chars``, and the note that says what was cut."""
    if len(content) <= max_chars:
        return content, ""
    return (
        content[:max_chars],
        f"\n[Only the first {max_chars} of its {len(content)} characters are shown here: "
        "the rest did not fit. Say so if the answer may depend on it.]",
    )


async def attachment_content(
    attachment: Attachment, files: FileStorage | None, *, vision: bool, max_chars: int
) -> ResponseInputContentParam:
    """What the model is given for ``attachment`` (see the module notes)."""
    name, mime_type = attachment.name, attachment.mime_type
    described = f"{name} ({mime_type})"
    if files is None or attachment.upload_descriptor is not None:
        return _text(f"[The user attached {described}; its content is not available.]")
    try:
        if is_image(mime_type):
            if not vision:
                return _text(
                    f"[The user attached an image, {described}. This model cannot see images: "
                    "if the answer needs it, say that you cannot see it.]"
                )
            data = await files.read(attachment.id)
            if len(data) > MAX_IMAGE_BYTES:
                return _text(f"[The user attached an image, {described}, too large to show.]")
            # Megabytes of base64: encoded in a thread, not on the event loop.
            encoded = await anyio.to_thread.run_sync(base64.b64encode, data)
            url = f"data:{mime_type};base64,{encoded.decode()}"
            return ResponseInputImageParam(type="input_image", image_url=url, detail="auto")
        if is_text(mime_type):
            data = await files.read(attachment.id)
            text = await anyio.to_thread.run_sync(_decode, data)
            content, note = _cut(text, max_chars)
            return _text(f"[The user attached the file {described}:]\n{content}{note}")
        if mime_type == PDF:
            known = _PDF_TEXTS.get(attachment.id)
            if known is None:
                extracted = await pdf_text(await files.read(attachment.id))
                known = extracted.text
                if extracted.pages_read < extracted.pages:
                    known += (
                        f"\n[Text of the first {extracted.pages_read} of its "
                        f"{extracted.pages} pages only.]"
                    )
                _PDF_TEXTS.put(attachment.id, known)
            content, note = _cut(known, max_chars)
            return _text(f"[The user attached the PDF {described}; its text:]\n{content}{note}")
    except NotFoundError:
        return _text(f"[The user attached {described}; its content is no longer available.]")
    except (UnreadablePdf, TimeoutError):
        return _text(f"[The user attached {described}; its text could not be read.]")
    except StoreError:
        logger.exception("could not read attachment %s for the model", attachment.id)
        return _text(f"[The user attached {described}; its content could not be read.]")
    return _text(f"[The user attached a file: {described}.]")
