"""Attachments reach the model: text inlined, PDF text, images by vision, within budget."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
from chatkit.types import AttachmentUploadDescriptor, FileAttachment
from pydantic import AnyUrl

from chatkit_server.files import LocalFileStorage
from chatkit_server.protocol.attachments import attachment_content
from chatkit_server.settings import Settings
from chatkit_server.testing.client import user_input
from tests.files.pdfs import pdf_with_pages
from tests.live import FakeLLM, Live, LiveFactory

PNG = b"\x89PNG\r\n\x1a\n" + b"\x00\x00\x00\rIHDR" + bytes(range(64))


async def upload(live: Live, name: str, data: bytes, mime_type: str) -> str:
    async with httpx.AsyncClient() as http:
        response = await http.post(
            f"{live.url}/chatkit/attachments", files={"file": (name, data, mime_type)}
        )
    assert response.status_code == 200, response.text
    attachment_id: str = response.json()["id"]
    return attachment_id


async def last_user_content(live: Live, fake_llm: FakeLLM, *attachment_ids: str) -> Any:
    turn = await live.client.stream(
        "threads.create", input=user_input("What is in it?", attachments=list(attachment_ids))
    )
    assert not turn.errors
    messages = fake_llm.backend.requests[-1].body["messages"]
    return [m for m in messages if m["role"] == "user"][-1]["content"]


async def test_a_text_file_is_inlined_with_its_name(live: Live, fake_llm: FakeLLM) -> None:
    attachment_id = await upload(live, "notes.md", b"# Plan\nship on Friday", "text/markdown")

    content = await last_user_content(live, fake_llm, attachment_id)

    # Plain string content (trap 2): every backend takes it.
    assert isinstance(content, str)
    assert content.startswith("What is in it?")
    assert "[The user attached the file notes.md (text/markdown):]\n# Plan\nship on Friday" in (
        content
    )


async def test_a_pdfs_text_reaches_the_model(live: Live, fake_llm: FakeLLM) -> None:
    pdf = pdf_with_pages("Invoice 4711", "Total due 99 EUR")
    attachment_id = await upload(live, "invoice.pdf", pdf, "application/pdf")

    content = await last_user_content(live, fake_llm, attachment_id)

    assert "[The user attached the PDF invoice.pdf (application/pdf); its text:]" in content
    assert "Invoice 4711" in content
    assert "Total due 99 EUR" in content


async def test_without_vision_an_image_is_named_not_sent(live: Live, fake_llm: FakeLLM) -> None:
    attachment_id = await upload(live, "photo.png", PNG, "image/png")

    content = await last_user_content(live, fake_llm, attachment_id)

    assert isinstance(content, str)
    assert "photo.png (image/png)" in content
    assert "cannot see images" in content
    assert "base64" not in content


async def test_with_vision_an_image_is_sent_as_a_data_url(
    start_live: LiveFactory, live_settings: Settings, fake_llm: FakeLLM
) -> None:
    async with start_live(live_settings.with_changes(llm_vision=True)) as live:
        attachment_id = await upload(live, "photo.png", PNG, "image/png")
        content = await last_user_content(live, fake_llm, attachment_id)

    assert isinstance(content, list)
    assert content[0] == {"type": "text", "text": "What is in it?"}
    image = content[1]
    assert image["type"] == "image_url"
    assert image["image_url"]["url"].startswith("data:image/png;base64,iVBORw0KGgo")


async def test_a_long_file_is_cut_with_a_note_within_the_budget(
    start_live: LiveFactory, live_settings: Settings, fake_llm: FakeLLM
) -> None:
    async with start_live(live_settings.with_changes(history_tokens=300)) as live:
        attachment_id = await upload(live, "long.txt", b"word " * 2000, "text/plain")
        content = await last_user_content(live, fake_llm, attachment_id)

    # Half of 300 tokens at 3 characters a token.
    assert "Only the first 450 of its 10000 characters are shown" in content
    assert len(content) < 1000


async def test_older_attachments_leave_the_history_first(
    start_live: LiveFactory, live_settings: Settings, fake_llm: FakeLLM
) -> None:
    async with start_live(live_settings.with_changes(history_tokens=400)) as live:
        old = await upload(live, "old.txt", b"old " * 150, "text/plain")
        first = await live.client.stream(
            "threads.create", input=user_input("first", attachments=[old])
        )
        new = await upload(live, "new.txt", b"new " * 150, "text/plain")
        await live.client.stream(
            "threads.add_user_message",
            thread_id=first.thread_id,
            input=user_input("second", attachments=[new]),
        )

    sent = " ".join(str(m["content"]) for m in fake_llm.backend.requests[-1].body["messages"])
    assert "new.txt" in sent
    assert "old.txt" not in sent


def _file(mime_type: str, *, uploaded: bool = True) -> FileAttachment:
    descriptor = (
        None
        if uploaded
        else AttachmentUploadDescriptor(url=AnyUrl("http://h/chatkit/x"), method="POST")
    )
    return FileAttachment(id="atc_1", name="f", mime_type=mime_type, upload_descriptor=descriptor)


async def _content(storage: LocalFileStorage, attachment: FileAttachment) -> str:
    part = await attachment_content(attachment, storage, vision=True, max_chars=100)
    assert part["type"] == "input_text"
    return str(part["text"])


async def test_what_the_model_is_told_when_content_is_missing(tmp_path: Path) -> None:
    storage = LocalFileStorage(tmp_path)

    assert "not available" in await _content(storage, _file("text/plain", uploaded=False))
    assert "no longer available" in await _content(storage, _file("text/plain"))

    async def one(data: bytes) -> AsyncIterator[bytes]:
        yield data

    await storage.save("atc_1", one(b"%PDF-1.4 damaged"))
    assert "could not be read" in await _content(storage, _file("application/pdf"))
    assert await _content(storage, _file("application/zip")) == (
        "[The user attached a file: f (application/zip).]"
    )


async def test_an_image_and_a_pdf_survive_a_restart(
    start_live: LiveFactory, live_settings: Settings, fake_llm: FakeLLM
) -> None:
    settings = live_settings.with_changes(llm_vision=True)
    async with start_live(settings) as live:
        image = await upload(live, "chart.png", PNG, "image/png")
        document = await upload(live, "report.pdf", pdf_with_pages("Revenue grew"), "x/unknown")
        turn = await live.client.stream(
            "threads.create", input=user_input("Summarize", attachments=[image, document])
        )
        assert not turn.errors

    async with start_live(settings) as live:  # the same data dir and database
        thread = await live.client.call("threads.get_by_id", thread_id=turn.thread_id)
        message = thread["items"]["data"][0]
        assert [a["name"] for a in message["attachments"]] == ["chart.png", "report.pdf"]
        assert message["attachments"][1]["mime_type"] == "application/pdf"  # by its bytes
        async with httpx.AsyncClient() as http:
            preview = await http.get(message["attachments"][0]["preview_url"])
        assert preview.content == PNG

        await live.client.stream(
            "threads.add_user_message",
            thread_id=turn.thread_id,
            input=user_input("And the chart?"),
        )
    first = [m for m in fake_llm.backend.requests[-1].body["messages"] if m["role"] == "user"][0]
    parts = first["content"]
    assert parts[0] == {"type": "text", "text": "Summarize"}
    assert parts[1]["image_url"]["url"].startswith("data:image/png;base64,")
    assert "Revenue grew" in parts[2]["text"]
