"""The console's features in a real browser: sign-in, workflows, threads, items, retry.

As in ``test_console_browser.py``: a real uvicorn with the loopback fake
backend, the system's Chromium through Playwright.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import jwt
import pytest

from chatkit_server.context import RequestContext
from chatkit_server.settings import Settings
from chatkit_server.testing.fake_backend import Reply
from chatkit_server.workflows.file import load_workflow_file
from tests.browser import REQUIRE_BROWSER, open_console
from tests.live import LOCAL, FakeLLM, Live, LiveFactory

if not REQUIRE_BROWSER:  # in CI a missing package fails the run instead
    pytest.importorskip("playwright", reason="the playwright package is not installed")
from playwright.async_api import Browser, Route, expect  # noqa: E402

SECRET = "console-test-secret-of-at-least-32-bytes"


def _token(user: str = "alice", secret: str = SECRET) -> str:
    return jwt.encode({"sub": user, "exp": int(time.time()) + 600}, secret, algorithm="HS256")


async def test_sign_in_asks_for_a_token_and_keeps_it_in_the_tab(
    browser: Browser, start_live: LiveFactory, live_settings: Settings, fake_llm: FakeLLM
) -> None:
    fake_llm.backend.script(Reply.text("Hello, Alice."))
    async with start_live(live_settings.with_changes(jwt_secret=SECRET)) as live:
        console = await open_console(browser, live.url, ready=False)
        page = console.page
        dialog = page.locator("#sign-in")
        await expect(dialog).to_be_visible()

        wrong = _token(secret="another-secret-also-32-bytes-long")
        await page.locator("#sign-in-token").fill(wrong)
        await page.locator("#sign-in-token").press("Enter")
        await expect(page.locator("#sign-in-error")).to_have_text("That token was refused.")

        token = _token()
        await page.locator("#sign-in-token").fill(token)
        await page.locator("#sign-in-token").press("Enter")
        await expect(dialog).to_be_hidden()
        await console.send("Hi, I am Alice")
        await expect(page.get_by_test_id("message-assistant")).to_have_text("Hello, Alice.")

        assert await page.evaluate("sessionStorage.getItem('chatkit-console-token')") == token
        assert await page.evaluate("localStorage.length") == 0
        assert await page.evaluate("document.cookie") == ""
        threads = await live.store.load_threads(10, None, "desc", RequestContext(user_id="alice"))
        assert len(threads.data) == 1

        await page.locator("#sign-out").click()
        await expect(dialog).to_be_visible()
        assert await page.evaluate("sessionStorage.length") == 0
        console.assert_clean()


WORKFLOWS = """\
default_workflow = "assistant"

[backends.fake]
base_url = "{url}"

[workflows.assistant]
backend = "fake"
model = "fake-model"
greeting = "Hello from the assistant"
starter_prompts = [{{ label = "Say hi", prompt = "Hi there" }}]

[workflows.coder]
backend = "fake"
model = "coder-small"
models = ["coder-small", "coder-big"]
greeting = "Let us write code"

[[workflows.assistant.client_tools]]
name = "pick_color"
description = "Ask the user to pick a color."
parameters = {{ type = "object", properties = {{ hint = {{ type = "string" }} }} }}
"""


@pytest.fixture
def workflow_settings(live_settings: Settings, tmp_path: Path, fake_llm: FakeLLM) -> Settings:
    path = tmp_path / "workflows.toml"
    path.write_text(WORKFLOWS.format(url=fake_llm.v1))
    return live_settings.with_changes(
        workflows_path=path, workflows_file=load_workflow_file(path, {})
    )


async def test_a_new_thread_takes_the_picked_workflow_model_and_starter_prompt(
    browser: Browser, start_live: LiveFactory, workflow_settings: Settings, fake_llm: FakeLLM
) -> None:
    fake_llm.backend.script(Reply.text("Code answer"), Reply.text("Hi answer"))
    async with start_live(workflow_settings) as live:
        console = await open_console(browser, live.url)
        page = console.page
        await expect(page.locator("#greeting")).to_have_text("Hello from the assistant")
        await expect(page.locator("#model-picker")).to_be_hidden()

        await page.locator("#workflow-select").select_option("coder")
        await expect(page.locator("#greeting")).to_have_text("Let us write code")
        await page.locator("#model-select").select_option("coder-big")
        await console.send("Write code")
        await expect(page.get_by_test_id("message-assistant")).to_have_text("Code answer")
        assert fake_llm.backend.requests[-1].body["model"] == "coder-big"
        # A thread keeps its workflow: the picker is for new threads only.
        await expect(page.locator("#workflow-select")).to_be_disabled()

        await page.get_by_test_id("new-thread").click()
        await page.locator("#workflow-select").select_option("assistant")
        await page.get_by_role("button", name="Say hi").click()
        await expect(page.get_by_test_id("message-user")).to_have_text("Hi there")
        await expect(page.get_by_test_id("message-assistant")).to_have_text("Hi answer")
        assert fake_llm.backend.requests[-1].body["model"] == "fake-model"

        # The thread's workflow is saved as its stream ends, just after the last event.
        workflows: list[Any] = []
        for _ in range(100):
            threads = await live.store.load_threads(10, None, "asc", LOCAL)
            workflows = [thread.metadata.get("workflow") for thread in threads.data]
            if None not in workflows:
                break
            await page.wait_for_timeout(50)
        assert workflows == ["coder", "assistant"]
        console.assert_clean()


async def test_reasoning_folds_and_a_client_tool_call_is_answered_from_the_page(
    browser: Browser, start_live: LiveFactory, workflow_settings: Settings, fake_llm: FakeLLM
) -> None:
    fake_llm.backend.script(
        Reply.tool_call("pick_color", {"hint": "warm"}, reasoning=["The user ", "wants a color."]),
        Reply.text("You picked red."),
    )
    async with start_live(workflow_settings) as live:
        console = await open_console(browser, live.url)
        page = console.page
        await console.send("Pick a color for me")

        tool = page.locator(".tool-call.pending")
        await expect(tool).to_contain_text("pick_color")
        await expect(tool).to_contain_text('"hint": "warm"')
        reasoning = page.locator("details.workflow")
        await expect(reasoning).to_contain_text("wants a color.")
        await expect(reasoning).not_to_have_attribute("open", "")  # folded once done
        await tool.locator("textarea").fill('{"color": "red"}')
        await tool.get_by_role("button", name="Send output").click()

        await expect(page.get_by_test_id("message-assistant")).to_have_text("You picked red.")
        await expect(page.locator(".tool-call.done")).to_contain_text("pick_color")
        messages = fake_llm.backend.requests[-1].body["messages"]
        assert any(
            message.get("role") == "tool" and "red" in str(message.get("content"))
            for message in messages
        ), messages
        console.assert_clean()


async def test_threads_are_renamed_deleted_and_listed_page_by_page(
    browser: Browser, live: Live, fake_llm: FakeLLM
) -> None:
    for number in range(32):  # more than one page of the list (30)
        await live.client.create_thread(f"thread {number}")
    console = await open_console(browser, live.url)
    page = console.page
    items = page.get_by_test_id("thread-list-item")
    await expect(items).to_have_count(30)
    await page.locator("#more-threads").click()
    await expect(items).to_have_count(32)
    await expect(page.locator("#more-threads")).to_be_hidden()

    await items.first.click()
    await expect(page.get_by_test_id("message-user")).to_have_text("thread 31")
    console.answers.append("Renamed thread")
    await page.locator("#rename-thread").click()
    await expect(items.first).to_have_text("Renamed thread")
    await expect(page.locator("#thread-title")).to_have_text("Renamed thread")
    await page.reload()
    await expect(page.locator("#thread-title")).to_have_text("Renamed thread")

    console.answers.append("")  # the confirm
    await page.locator("#delete-thread").click()
    await expect(items).to_have_count(29)  # the first page of the reloaded list, less one
    await expect(page.get_by_test_id("message-user")).to_have_count(0)
    threads = await live.store.load_threads(40, None, "desc", LOCAL)
    assert len(threads.data) == 31
    assert "Renamed thread" not in [thread.title for thread in threads.data]
    console.assert_clean()


async def test_an_error_event_offers_retry_and_feedback_is_sent(
    browser: Browser, live: Live, fake_llm: FakeLLM
) -> None:
    fake_llm.backend.script(Reply(status=500), Reply.text("Second time lucky"))
    console = await open_console(browser, live.url)
    page = console.page

    await console.send("Please work")
    status = page.locator("#status")
    await expect(status).to_be_visible()
    await status.get_by_role("button", name="Retry").click()
    await expect(page.get_by_test_id("message-assistant")).to_have_text("Second time lucky")
    await expect(page.get_by_test_id("message-user")).to_have_count(1)

    async with page.expect_response(
        lambda response: (
            response.url.endswith("/chatkit")
            and json.loads(response.request.post_data or "{}").get("type") == "items.feedback"
        )
    ) as feedback:
        await page.get_by_role("button", name="Good answer").click()
    assert (await feedback.value).status == 200
    await expect(page.get_by_role("button", name="Good answer")).to_have_attribute(
        "aria-pressed", "true"
    )
    console.assert_clean()


def _item(item_id: str, kind: str, **fields: Any) -> dict[str, Any]:
    return {
        "id": item_id,
        "thread_id": "thr_demo",
        "created_at": "2026-01-01T00:00:00",
        "type": kind,
        **fields,
    }


# Every kind of item the console draws, and one it has never heard of.
ITEMS = [
    _item(
        "msg_1",
        "user_message",
        content=[{"type": "input_text", "text": "Show me everything"}],
        attachments=[],
        inference_options={},
    ),
    _item(
        "wf_1",
        "workflow",
        workflow={
            "type": "reasoning",
            "tasks": [{"type": "thought", "title": "Thinking", "content": "Deep *thoughts*"}],
            "summary": {"duration": 3},
            "expanded": False,
        },
    ),
    _item(
        "tsk_1",
        "task",
        task={"type": "custom", "title": "Looking up the order", "status_indicator": "loading"},
    ),
    _item(
        "ctc_1",
        "client_tool_call",
        status="pending",
        call_id="call_1",
        name="pick_color",
        arguments={"hint": "warm"},
    ),
    _item(
        "wdg_1",
        "widget",
        widget={
            "type": "Card",
            "children": [
                {"type": "Title", "value": "Order 42"},
                {"type": "Text", "value": "Shipped <b>today</b>"},
                {
                    "type": "Button",
                    "label": "Track it",
                    "onClickAction": {"type": "order.track", "payload": {"order": 42}},
                },
            ],
        },
    ),
    _item("new_1", "hologram", content={"shape": "cube"}),
]


async def test_every_item_kind_is_drawn_and_widget_actions_are_sent(
    browser: Browser, live: Live
) -> None:
    console = await open_console(browser, live.url)
    page = console.page

    async def fake_server(route: Route) -> None:
        body = json.loads(route.request.post_data or "{}")
        answers = {
            "threads.get_by_id": {
                "id": "thr_demo",
                "title": "Demo",
                "created_at": "2026-01-01T00:00:00",
                "status": {"type": "active"},
                "items": {"data": [], "has_more": False},
            },
            "items.list": {"data": list(reversed(ITEMS)), "has_more": False, "after": None},
            "threads.list": {"data": [], "has_more": False, "after": None},
        }
        if body["type"] in answers:
            await route.fulfill(json=answers[body["type"]])
        else:  # a streaming request: an empty stream
            await route.fulfill(body="", content_type="text/event-stream")

    await page.route("**/chatkit", fake_server)
    await page.goto(f"{live.url}/#thread=thr_demo")
    await page.reload()  # a new hash alone loads nothing

    await expect(page.locator("details.workflow summary")).to_have_text("Thought for 3 s")
    await expect(page.locator(".task-item")).to_contain_text("Looking up the order")
    await expect(page.locator(".task-item .spinner")).to_be_visible()
    await expect(page.locator(".tool-call")).to_contain_text("pick_color")
    await expect(page.locator(".tool-call")).to_contain_text("waiting for the front end")
    widget = page.locator(".widget")
    await expect(widget.locator("h3")).to_have_text("Order 42")
    await expect(widget).to_contain_text("Shipped <b>today</b>")  # text, never HTML
    await expect(page.locator("details.unknown summary")).to_contain_text("hologram")

    async with page.expect_request(
        lambda request: "custom_action" in (request.post_data or "")
    ) as request:
        await widget.get_by_role("button", name="Track it").click()
    action = json.loads((await request.value).post_data or "{}")
    assert action["params"] == {
        "thread_id": "thr_demo",
        "item_id": "wdg_1",
        "action": {"type": "order.track", "payload": {"order": 42}},
    }
    console.assert_clean()


async def test_retry_is_offered_on_the_last_answer_only_and_answers_again(
    browser: Browser, live: Live, fake_llm: FakeLLM
) -> None:
    fake_llm.backend.script(Reply.text("First"), Reply.text("Second"), Reply.text("Again"))
    console = await open_console(browser, live.url)
    page = console.page
    await console.send("one")
    await console.answer_done()
    await console.send("two")
    await expect(page.get_by_test_id("message-assistant")).to_have_text(["First", "Second"])
    await console.answer_done()

    retry = page.get_by_role("button", name="Answer again")
    await expect(retry).to_have_count(1)
    await retry.click()
    await expect(page.get_by_test_id("message-assistant")).to_have_text(["First", "Again"])
    await page.reload()
    await expect(page.get_by_test_id("message-assistant")).to_have_text(["First", "Again"])
    await expect(page.get_by_test_id("message-user")).to_have_text(["one", "two"])
    console.assert_clean()
