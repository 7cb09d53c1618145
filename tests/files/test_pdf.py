"""PDF text through pypdf, bounded in pages."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import psutil
import pytest

from chatkit_server.files import pdf
from chatkit_server.files.pdf import UnreadablePdf, pdf_text
from tests.files.pdfs import pdf_with_pages


async def test_the_text_of_every_page() -> None:
    extracted = await pdf_text(pdf_with_pages("First page", "Second page"))
    assert "First page" in extracted.text
    assert "Second page" in extracted.text
    assert (extracted.pages_read, extracted.pages) == (2, 2)


async def test_pages_past_the_bound_are_not_read() -> None:
    extracted = await pdf_text(pdf_with_pages("one", "two", "three"), max_pages=2)
    assert "three" not in extracted.text
    assert (extracted.pages_read, extracted.pages) == (2, 3)


async def test_a_time_bound_stops_between_pages() -> None:
    extracted = await pdf_text(pdf_with_pages("one", "two"), seconds=0)
    assert extracted.pages_read == 0


@pytest.mark.parametrize("data", [b"%PDF-1.4\nnot really", b"", b"\x00" * 50])
async def test_damaged_pdfs_are_unreadable(data: bytes) -> None:
    with pytest.raises(UnreadablePdf):
        await pdf_text(data)


async def test_a_reader_past_its_time_is_killed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    stuck = tmp_path / "stuck.py"
    stuck.write_text("import time\ntime.sleep(60)\n")
    monkeypatch.setattr(pdf, "_WORKER", stuck)
    monkeypatch.setattr(pdf, "_START_SECONDS", 0.5)
    started = time.monotonic()

    with pytest.raises(UnreadablePdf, match="too long"):
        await pdf_text(pdf_with_pages("x"), seconds=0.5)

    assert time.monotonic() - started < 5
    assert psutil.Process().children() == []


async def test_extraction_leaves_the_event_loop_free() -> None:
    # 200 pages take the child a while; the loop keeps ticking meanwhile.
    data = pdf_with_pages(*[f"Page {index} " + "word " * 100 for index in range(200)])
    ticks = 0

    async def tick() -> None:
        nonlocal ticks
        while True:
            await asyncio.sleep(0.001)
            ticks += 1

    ticker = asyncio.create_task(tick())
    started = time.monotonic()
    extracted = await pdf_text(data, max_pages=200)
    elapsed = time.monotonic() - started
    ticker.cancel()

    assert extracted.pages_read == 200
    # A loop that never waited on extraction ticks about every millisecond.
    assert ticks > elapsed * 300


async def test_the_lines_of_a_page() -> None:
    extracted = await pdf_text(pdf_with_pages("top line\nmiddle line\nbottom line"))
    assert extracted.text.splitlines() == ["top line", "middle line", "bottom line"]
