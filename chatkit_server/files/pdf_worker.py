"""The PDF text extractor's child process: run by path, never imported by the server.

Reads a PDF on stdin, writes JSON on stdout: ``{"text", "pages_read",
"pages"}``, or ``{"error": reason}``. Arguments: the most pages to read and
the seconds allowed. It imports pypdf and the standard library only, so it
starts in a fraction of a second (the server's package would take a second).
"""

from __future__ import annotations

import io
import json
import sys
import time


def main() -> None:
    """Extract, and print the outcome as one JSON document."""
    max_pages, seconds = int(sys.argv[1]), float(sys.argv[2])
    deadline = time.monotonic() + seconds
    data = sys.stdin.buffer.read()
    try:
        from pypdf import PdfReader
        from pypdf.errors import PyPdfError
    except ImportError:
        json.dump({"error": "pypdf is not installed"}, sys.stdout)
        return
    try:
        reader = PdfReader(io.BytesIO(data))
        if reader.is_encrypted:
            json.dump({"error": "the PDF is encrypted"}, sys.stdout)
            return
        pages = len(reader.pages)
        texts: list[str] = []
        for page in reader.pages[:max_pages]:
            if time.monotonic() > deadline:
                break
            texts.append(page.extract_text().strip())
    except (PyPdfError, ValueError, KeyError, TypeError, RecursionError) as exc:
        # pypdf reports damaged files through its own errors and, for some
        # structures, plain Python ones.
        json.dump({"error": type(exc).__name__}, sys.stdout)
        return
    json.dump({"text": "\n\n".join(texts), "pages_read": len(texts), "pages": pages}, sys.stdout)


if __name__ == "__main__":
    main()
