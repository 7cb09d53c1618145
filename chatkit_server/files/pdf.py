"""The text of a PDF, through pypdf, bounded in pages and time.

Extraction is CPU work in pure Python (a 200-page PDF takes seconds). In a
thread it would hold the GIL against the event loop and slow every stream
the process is answering; so it runs in a child process
(:mod:`chatkit_server.files.pdf_worker`, run by path: it imports pypdf and
nothing of the server), on another core, and stops at a page limit and a
deadline. A page that takes too long on its own cannot be interrupted inside
pypdf, but a process can: past the deadline it is killed. So a huge or
hostile PDF costs a bounded amount, and the model is told when the text is
partial.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import anyio

__all__ = ["MAX_PDF_PAGES", "PDF_SECONDS", "PdfText", "UnreadablePdf", "pdf_text"]

MAX_PDF_PAGES: Final = 100
"""Pages read at most from one PDF."""
PDF_SECONDS: Final = 10.0
"""Time spent at most extracting one PDF's text."""
# Starting the interpreter and importing pypdf, on a busy machine.
_START_SECONDS: Final = 5.0
_WORKER: Final = Path(__file__).with_name("pdf_worker.py")


class UnreadablePdf(Exception):
    """The bytes are not a PDF pypdf can read (damaged, encrypted), or reading took too long."""


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
    """The text of the PDF ``data``, in a child process, within ``max_pages`` and ``seconds``.

    Raises:
        UnreadablePdf: pypdf cannot read it, or the child ran out of time.
    """
    # -I: the child sees neither PYTHONPATH nor the working directory, only
    # this interpreter's installed packages (pypdf).
    command = [sys.executable, "-I", str(_WORKER), str(max_pages), str(seconds)]
    try:
        with anyio.fail_after(seconds + _START_SECONDS):
            done = await anyio.run_process(command, input=data, check=False)
    except TimeoutError:  # run_process kills the child when cancelled
        raise UnreadablePdf("reading the PDF took too long") from None
    try:
        outcome = json.loads(done.stdout)
    except ValueError:
        raise UnreadablePdf(f"the PDF reader failed (status {done.returncode})") from None
    if "error" in outcome:
        raise UnreadablePdf(str(outcome["error"]))
    return PdfText(
        text=str(outcome["text"]),
        pages_read=int(outcome["pages_read"]),
        pages=int(outcome["pages"]),
    )
