"""PDF text through pypdf, bounded in pages."""

from __future__ import annotations

import pytest

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
