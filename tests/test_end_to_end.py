"""One conversation that uses every composer control, over real HTTP, then reloaded.

Real uvicorn on loopback, a real database (a SQLite file, and PostgreSQL), the
fake OpenAI-compatible backend and a fake speech-to-text server. The user
dictates the first message, attaches an image and a PDF (two-phase uploads,
``POST`` multipart and ``PUT`` raw), presses the counter widget's button and
answers a structured question; after a restart on the same database the
thread reloads with every item as it was left, and the attachments are
still served.
"""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from chatkit.types import (
    StructuredInputItem,
    ThreadItemReplacedEvent,
    WidgetItem,
)

from chatkit_server.settings import Settings
from chatkit_server.testing.client import ChatKitClient, user_input
from chatkit_server.testing.fake_backend import Reply
from chatkit_server.testing.live import serve_app
from chatkit_server.workflows.file import load_workflow_file
from tests.files.pdfs import pdf_with_pages
from tests.live import FakeLLM, LiveFactory
from tests.llm.test_transcription import FakeWhisper

PNG = b"\x89PNG\r\n\x1a\n" + b"\x00\x00\x00\rIHDR" + bytes(range(64))
PDF = pdf_with_pages("Invoice 4711", "Total due 99 EUR")
SPOKEN = "What do these two files say"

WORKFLOWS = """
default_workflow = "everything"

[backends.fake]
base_url = "{url}"

[workflows.everything]
backend = "fake"
model = "fake-model"
vision = true
tools = ["chatkit_server.tools:show_counter", "chatkit_server.tools:ask_user_to_choose"]

[workflows.everything.actions]
"counter.add" = "chatkit_server.tools:add_to_counter"
"counter.reset" = "chatkit_server.tools:reset_counter"
"""


@pytest.fixture
async def whisper_url() -> AsyncIterator[str]:
    async with serve_app(FakeWhisper(text=SPOKEN).app) as url:
        yield url + "/v1"


@pytest.fixture
def settings(
    tmp_path: Path,
    live_settings: Settings,
    fake_llm: FakeLLM,
    whisper_url: str,
    server_database_url: str,
) -> Settings:
    path = tmp_path / "workflows.toml"
    path.write_text(WORKFLOWS.format(url=fake_llm.v1))
    return live_settings.with_changes(
        database_url=server_database_url,
        workflows_path=path,
        workflows_file=load_workflow_file(path, {}),
        transcribe_base_url=whisper_url,
        transcribe_model="base.en",
    )


async def dictate(client: ChatKitClient, audio: bytes) -> str:
    answer = await client.call(
        "input.transcribe",
        audio_base64=base64.b64encode(audio).decode(),
        mime_type="audio/webm",
    )
    text: str = answer["text"]
    return text


async def upload_two_phase(
    client: ChatKitClient, name: str, data: bytes, mime_type: str, method: str
) -> dict[str, Any]:
    """``attachments.create``, then the bytes to the descriptor's URL (POST multipart or PUT)."""
    created = await client.call(
        "attachments.create", name=name, size=len(data), mime_type=mime_type
    )
    descriptor = created["upload_descriptor"]
    assert descriptor["method"] == "POST"
    async with httpx.AsyncClient() as http:
        if method == "POST":
            response = await http.post(descriptor["url"], files={"file": (name, data, mime_type)})
        else:
            response = await http.put(descriptor["url"], content=data)
    assert response.status_code == 200, response.text
    uploaded: dict[str, Any] = response.json()
    assert uploaded["id"] == created["id"]
    assert "upload_descriptor" not in uploaded
    return uploaded


def button(widget: WidgetItem, label: str) -> dict[str, Any]:
    row = widget.widget.model_dump(mode="json")["children"][2]["children"]
    found: list[dict[str, Any]] = [child for child in row if child["label"] == label]
    assert len(found) == 1
    return found[0]


def summary(item: dict[str, Any]) -> tuple[Any, ...]:
    """An item as a reader of the thread sees it: its type and what it shows."""
    kind = item["type"]
    if kind == "user_message":
        text = "".join(part["text"] for part in item["content"])
        return kind, text, [a["name"] for a in item["attachments"]]
    if kind == "assistant_message":
        return kind, "".join(part["text"] for part in item["content"])
    if kind == "widget":
        return kind, item["widget"]["children"][1]["value"], item.get("copy_text")
    if kind == "structured_input":
        answers = [(q["id"], (q.get("answer") or {}).get("values")) for q in item["inputs"]]
        return kind, item["status"], answers
    if kind == "workflow":  # the tool calls, shown as finished tasks
        return kind, [(t["title"], t["status_indicator"]) for t in item["workflow"]["tasks"]]
    return (kind,)


def user_content(fake_llm: FakeLLM, index: int) -> list[Any]:
    """The user messages' content of one completion request to the model, in order."""
    bodies = [r.body for r in fake_llm.backend.requests if r.path == "/v1/chat/completions"]
    return [m["content"] for m in bodies[index]["messages"] if m["role"] == "user"]


async def test_a_conversation_using_every_control_reloads_intact(
    start_live: LiveFactory, settings: Settings, fake_llm: FakeLLM
) -> None:
    backend = fake_llm.backend
    async with start_live(settings) as live:
        client = live.client

        # 1. Dictation gives the first message's text.
        spoken = await dictate(client, b"\x1aE\xdf\xa3 some opus frames")
        assert spoken == SPOKEN

        # 2. An image and a PDF, uploaded in two phases; sent with the dictated text.
        image = await upload_two_phase(client, "chart.png", PNG, "image/png", "POST")
        pdf = await upload_two_phase(client, "invoice.pdf", PDF, "application/pdf", "PUT")
        assert image["type"] == "image"
        assert pdf["mime_type"] == "application/pdf"
        backend.script(
            Reply.tool_call("show_counter", {"label": "Cups"}), Reply.text("Here is a counter.")
        )
        first = await client.stream(
            "threads.create", input=user_input(spoken, attachments=[image["id"], pdf["id"]])
        )
        assert not first.errors
        thread_id = first.thread_id
        [sent] = user_content(fake_llm, 0)
        assert sent[0] == {"type": "text", "text": SPOKEN}
        assert sent[1]["type"] == "image_url"
        assert sent[1]["image_url"]["url"].startswith("data:image/png;base64,")
        assert base64.b64decode(sent[1]["image_url"]["url"].split(",", 1)[1]) == PNG
        assert "invoice.pdf" in sent[2]["text"]
        assert "Invoice 4711" in sent[2]["text"]
        assert "Total due 99 EUR" in sent[2]["text"]

        # 3. The tool's widget; pressing its button replaces it in place.
        [widget] = [item for item in first.done_items if isinstance(item, WidgetItem)]
        assert first.assistant_text == "Here is a counter."
        pressed = await client.stream(
            "threads.custom_action",
            thread_id=thread_id,
            item_id=widget.id,
            action=button(widget, "Add one")["onClickAction"],
        )
        assert not pressed.errors
        [replaced] = [e.item for e in pressed.events if isinstance(e, ThreadItemReplacedEvent)]
        assert isinstance(replaced, WidgetItem)
        assert replaced.id == widget.id
        assert replaced.widget.model_dump(mode="json")["children"][1]["value"] == "Count: 1"

        # 4. A structured question: the run waits, the answer resumes it.
        backend.script(
            Reply.tool_call(
                "ask_user_to_choose", {"question": "Tea or coffee?", "options": ["Tea", "Coffee"]}
            )
        )
        asked = await client.add_message(thread_id, "Help me choose a drink")
        assert not asked.errors
        [question] = [i for i in asked.done_items if isinstance(i, StructuredInputItem)]
        assert question.status == "pending"
        assert not asked.assistant_messages
        backend.script(Reply.text("Tea it is."))
        answered = await client.stream(
            "threads.add_structured_input",
            thread_id=thread_id,
            item_id=question.id,
            input={"answers": {"choice": {"values": ["Tea"]}}},
        )
        assert not answered.errors
        assert answered.assistant_text == "Tea it is."
        assert "- Tea or coffee?: Tea" in str(user_content(fake_llm, -1)[-1])
        assert backend.pending == 0

    expected = [
        ("user_message", SPOKEN, ["chart.png", "invoice.pdf"]),
        ("workflow", [("Ran show_counter", "complete")]),
        ("widget", "Count: 1", "Cups: 1"),
        ("assistant_message", "Here is a counter."),
        ("user_message", "Help me choose a drink", []),
        ("workflow", [("Ran ask_user_to_choose", "complete")]),
        ("structured_input", "answered", [("choice", ["Tea"])]),
        ("assistant_message", "Tea it is."),
    ]

    # 5. A restart on the same database: the thread reloads as it was left.
    async with start_live(settings) as live:
        client = live.client
        thread = await client.call("threads.get_by_id", thread_id=thread_id)
        page = await client.call("items.list", thread_id=thread_id, limit=50, order="asc")
        shown = [summary(item) for item in thread["items"]["data"]]
        listed = [summary(item) for item in page["data"]]
        assert shown == listed == expected
        assert not thread["items"]["has_more"]
        ids = [item["id"] for item in page["data"]]
        assert (ids[2], ids[6]) == (widget.id, question.id)

        # The attachments are still served: the image by its preview link, and
        # both to the model when the conversation goes on.
        reloaded_image, reloaded_pdf = page["data"][0]["attachments"]
        assert (reloaded_image["id"], reloaded_pdf["id"]) == (image["id"], pdf["id"])
        async with httpx.AsyncClient() as http:
            preview = await http.get(reloaded_image["preview_url"])
        assert preview.status_code == 200
        assert preview.content == PNG
        assert await live.state.files.read(pdf["id"]) == PDF

        backend.script(Reply.text("Still here."))
        more = await client.add_message(thread_id, "Anything else in the invoice?")
        assert more.assistant_text == "Still here."
        history = user_content(fake_llm, -1)
        # The whole conversation reaches the model in order, the widget as it is now.
        assert len(history) == 7
        assert history[0][1]["image_url"]["url"] == sent[1]["image_url"]["url"]
        assert "Total due 99 EUR" in history[0][2]["text"]
        assert "Ran show_counter" in history[1]
        assert '"value":"Count: 1"' in history[2]
        assert history[3] == "Help me choose a drink"
        assert "Ran ask_user_to_choose" in history[4]
        assert "- Tea or coffee?: Tea" in history[5]
        assert history[6] == "Anything else in the invoice?"
