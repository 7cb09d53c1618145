"""The text of a PDF, through pypdf, bounded in pages and time.

Extraction is CPU work in pure Python (a 200-page PDF takes seconds), so it
runs in a worker thread, never on the event loop, and stops at a page limit
and a deadline: a huge or hostile PDF costs a bounded amount, and the model
is told that the text is partial.
"""

from __future__ import annotations

import io
import time
from dataclasses import dataclass
from typing import Final

import anyio.to_thread
from pypdf import PdfReader
from pypdf.errors import PyPdfError

__all__ = ["MAX_PDF_PAGES", "PDF_SECONDS", "PdfText", "UnreadablePdf", "pdf_text"]

MAX_PDF_PAGES: Final = 100
"""Pages read at most from one PDF."""
PDF_SECONDS: Final = 10.0
"""Time spent at most extracting one PDF's text."""


class UnreadablePdf(Exception):
    """The bytes are not a PDF pypdf can read (damaged, encrypted)."""


@dataclass(frozen=True)
class PdfText:
    """What was read of a PDF.

    Attributes:
        text: The text of the pages read, a blank line between pages.
        pages_read: How many pages it holds (from the first).
        pages: How many pages the PDF has.
    """

    text: str
    pages_read: int
    pages: int


async def pdf_text(
    data: bytes, *, max_pages: int = MAX_PDF_PAGES, seconds: float = PDF_SECONDS
) -> PdfText:
    """The text of the PDF ``data``, off the event loop, within ``max_pages`` and ``seconds``.

    Raises:
        UnreadablePdf: pypdf cannot read it.
    """
    deadline = time.monotonic() + seconds
    # A page that takes long on its own is not interrupted mid-page (pypdf has
    # no hook for it); the wait for it is, and the thread ends with its page.
    with anyio.fail_after(seconds + 1):
        return await anyio.to_thread.run_sync(
            _extract, data, max_pages, deadline, abandon_on_cancel=True
        )


def _extract(data: bytes, max_pages: int, deadline: float) -> PdfText:
    try:
        reader = PdfReader(io.BytesIO(data))
        if reader.is_encrypted:
            raise UnreadablePdf("the PDF is encrypted")
        pages = len(reader.pages)
        texts: list[str] = []
        for page in reader.pages[:max_pages]:
            if time.monotonic() > deadline:
                break
            texts.append(page.extract_text().strip())
    except (PyPdfError, ValueError, KeyError, TypeError, RecursionError) as exc:
        # pypdf reports damaged files through its own errors and, for some
        # structures, plain Python ones.
        raise UnreadablePdf(type(exc).__name__) from None
    return PdfText(text="\n\n".join(texts), pages_read=len(texts), pages=pages)
