"""The console and the CORS set-up in a real browser: Chromium driven by Playwright.

Each test runs a real uvicorn on 127.0.0.1 with the loopback fake backend
(``tests/live.py``) and the system's Chromium (never a browser downloaded at
run time). Without Chromium or the ``playwright`` package the tests are
skipped with the reason, unless ``CHATKIT_REQUIRE_BROWSER=1`` (CI), which
turns the skip into a failure.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

import pytest
from starlette.applications import Starlette
from starlette.responses import HTMLResponse
from starlette.routing import Route

from chatkit_server.settings import Settings
from chatkit_server.testing.fake_backend import Reply
from chatkit_server.testing.live import serve_app
from tests.browser import REQUIRE_BROWSER, open_console
from tests.live import LOCAL, FakeLLM, Live, LiveFactory

if not REQUIRE_BROWSER:  # in CI a missing package fails the run instead
    pytest.importorskip("playwright", reason="the playwright package is not installed")
from playwright.async_api import Browser, expect  # noqa: E402


async def test_an_answer_streams_in_and_the_thread_reopens_from_the_list(
    browser: Browser, live: Live, fake_llm: FakeLLM
) -> None:
    fake_llm.backend.script(Reply.count(40, delay=0.03))
    console = await open_console(browser, live.url)
    page = console.page
    # Every distinct text of the answer, sampled once a frame: what the user saw.
    await page.evaluate(
        """() => {
            window.seen = [];
            const tick = () => {
                const answer = document.querySelector('[data-testid="message-assistant"]');
                const text = answer ? answer.querySelector('.markdown').textContent.trim() : '';
                if (text && window.seen.at(-1) !== text) window.seen.push(text);
                requestAnimationFrame(tick);
            };
            tick();
        }"""
    )

    await console.send("Hello console")

    await expect(page.get_by_test_id("message-assistant")).to_contain_text("tok39")
    await console.answer_done()
    seen: list[str] = await page.evaluate("window.seen")
    assert len(seen) > 2, seen  # painted while it streamed, not once at the end
    growing = zip(seen, seen[1:], strict=False)
    assert all(later.startswith(earlier) for earlier, later in growing), seen
    await expect(page.get_by_test_id("thread-list-item")).to_have_count(1)

    await page.goto(live.url)  # a fresh load, no thread open
    await expect(page.get_by_test_id("message-user")).to_have_count(0)
    await page.get_by_test_id("thread-list-item").first.click()
    await expect(page.get_by_test_id("message-user")).to_have_text("Hello console")
    await expect(page.get_by_test_id("message-assistant")).to_contain_text("tok0 tok1")
    await expect(page.get_by_test_id("message-assistant")).to_contain_text("tok39")

    await page.reload()  # the open thread is in the address: it opens again
    await expect(page.get_by_test_id("message-user")).to_have_text("Hello console")
    await expect(page.get_by_test_id("message-assistant")).to_contain_text("tok39")
    console.assert_clean()


async def test_stop_keeps_the_partial_answer_after_a_reload(
    browser: Browser, live: Live, fake_llm: FakeLLM
) -> None:
    fake_llm.backend.script(Reply.count(500, delay=0.02))
    console = await open_console(browser, live.url)
    page = console.page

    await console.send("Tell me everything")
    await expect(page.get_by_test_id("message-assistant")).to_contain_text("tok10")
    await page.get_by_test_id("composer-stop").click()

    record = await fake_llm.backend.wait_for_stream_end()
    assert record.disconnected  # the backend was cancelled, not left generating
    assert record.tokens_sent < 500
    shown = await page.get_by_test_id("message-assistant").inner_text()
    assert "tok10" in shown
    await expect(page.get_by_test_id("composer-send")).to_be_visible()

    thread_id = page.url.split("#thread=", 1)[1]
    for _ in range(100):  # the partial answer is saved as the stream winds down
        items = await live.store.load_thread_items(thread_id, None, 10, "asc", LOCAL)
        if any(item.type == "assistant_message" for item in items.data):
            break
        await page.wait_for_timeout(50)
    await page.goto(live.url)
    await page.get_by_test_id("thread-list-item").first.click()
    await expect(page.get_by_test_id("message-user")).to_have_text("Tell me everything")
    await expect(page.get_by_test_id("message-assistant")).to_contain_text("tok10")
    console.assert_clean()


MALICIOUS_ANSWER = (
    'Look <img src=x onerror="window.pwned = 1; alert(1)"> here, '
    "[click me](javascript:window.pwned=2;alert(2)) "
    "<script>window.pwned = 3; alert(3)</script>"
    '<a href="javascript:alert(4)">or me</a> '
    "![tracker](http://127.0.0.2:9/pixel.png) "
    '<iframe src="http://127.0.0.2:9/frame"></iframe>'
    '<svg><animate onbegin="alert(5)" attributeName="x" dur="1s"/></svg> done'
)


async def test_a_malicious_markdown_answer_runs_nothing(
    browser: Browser, live: Live, fake_llm: FakeLLM
) -> None:
    fake_llm.backend.script(Reply.text(MALICIOUS_ANSWER))
    console = await open_console(browser, live.url)
    page = console.page

    await console.send("Say something nasty")
    await expect(page.get_by_test_id("message-assistant")).to_contain_text("done")
    await console.answer_done()
    answer = page.get_by_test_id("message-assistant")
    for name in ("click me", "or me"):
        link = answer.get_by_text(name)
        assert await link.get_attribute("href") is None
        await link.click()
    await page.wait_for_timeout(300)

    assert await page.evaluate("window.pwned") is None
    assert await answer.locator("script, iframe, [onerror], [onbegin]").count() == 0
    assert console.dialogs == []
    console.assert_only_own_origin()
    # Chromium reports the handlers DOMPurify meets while it parses the answer
    # in an inert document: nothing runs there, and the policy refuses them too.
    refused = "Executing inline event handler violates the following Content Security Policy"
    assert all(error.startswith(refused) for error in console.errors), console.errors


async def test_the_page_asks_nothing_of_any_other_host(
    browser: Browser, live: Live, fake_llm: FakeLLM
) -> None:
    fake_llm.backend.script(Reply.text("Fine, **thanks**."))
    console = await open_console(browser, live.url)

    await console.send("How are you?")
    await console.answer_done()
    await console.page.reload()
    await expect(console.page.get_by_test_id("message-assistant")).to_contain_text("Fine")

    console.assert_clean()
    paths = {urlsplit(url).path for url in console.requests if not url.startswith("data:")}
    assert paths <= {
        "/",
        "/console/app.js",
        "/console/api.js",
        "/console/dictation.js",
        "/console/render.js",
        "/console/updates.js",
        "/console/console.css",
        "/console/vendor/marked.esm.js",
        "/console/vendor/purify.es.mjs",
        "/chatkit",
        "/chatkit/workflows",
    }, paths


# A page of another origin calls the server as a ChatKit front end would: the
# component's headers, a streamed answer read chunk by chunk.
CROSS_ORIGIN_FETCH = """async (server) => {
    try {
        const response = await fetch(server + '/chatkit', {
            method: 'POST',
            headers: {
                'Content-Type': 'application/json',
                'chatkit-frame-instance-id': 'frame-1',
            },
            body: JSON.stringify({
                type: 'threads.create',
                params: {input: {content: [{type: 'input_text', text: 'hi'}], attachments: [],
                                 inference_options: {}}},
            }),
        });
        const reader = response.body.getReader();
        const decoder = new TextDecoder();
        const chunks = [];
        for (;;) {
            const {value, done} = await reader.read();
            if (done) break;
            chunks.push({at: performance.now(), text: decoder.decode(value)});
        }
        return {status: response.status, chunks};
    } catch (error) {
        return {error: String(error)};
    }
}"""


def _other_origin() -> Starlette:
    async def page(_request: Any) -> HTMLResponse:
        return HTMLResponse("<!doctype html><title>another site</title><p>another site</p>")

    return Starlette(routes=[Route("/", page)])


async def test_cross_origin_fetch_passes_cors_only_for_allowed_origins(
    browser: Browser, start_live: LiveFactory, live_settings: Settings, fake_llm: FakeLLM
) -> None:
    fake_llm.backend.script(Reply.count(20, delay=0.05))
    async with (
        serve_app(_other_origin(), lifespan="off") as allowed,
        serve_app(_other_origin(), lifespan="off") as refused,
    ):
        settings = live_settings.with_changes(cors_origins=(allowed,))
        async with start_live(settings) as live:
            context = await browser.new_context()
            page = await context.new_page()
            await page.goto(allowed)
            result = await page.evaluate(CROSS_ORIGIN_FETCH, live.url)
            assert result.get("status") == 200, result
            text = "".join(chunk["text"] for chunk in result["chunks"])
            assert "tok19" in text
            # Read as it arrived: the answer came in several reads over its second.
            assert len(result["chunks"]) > 3
            assert result["chunks"][-1]["at"] - result["chunks"][0]["at"] > 300

            requests_before = len(fake_llm.backend.requests)
            await page.goto(refused)
            result = await page.evaluate(CROSS_ORIGIN_FETCH, live.url)
            assert "error" in result, result  # the browser refused to send or read it
            assert len(fake_llm.backend.requests) == requests_before
            await context.close()


async def test_the_policy_blocks_what_slips_past_the_sanitizer(
    browser: Browser, live: Live
) -> None:
    # The second line of defence: markup put in the page by any other path
    # still runs no inline script and loads nothing from another host.
    console = await open_console(browser, live.url)
    page = console.page
    violations = await page.evaluate(
        """async () => {
            const seen = [];
            document.addEventListener('securitypolicyviolation', (event) =>
                seen.push(event.violatedDirective));
            const script = document.createElement('script');
            script.textContent = 'window.pwned = 1';
            document.body.append(script);
            const image = document.createElement('img');
            image.src = 'http://127.0.0.2:9/pixel.png';
            document.body.append(image);
            await fetch('http://127.0.0.2:9/data').catch(() => null);
            await new Promise((resolve) => setTimeout(resolve, 200));
            return seen;
        }"""
    )
    assert await page.evaluate("window.pwned") is None
    assert {"script-src-elem", "img-src", "connect-src"} <= set(violations), violations


async def test_the_page_marks_when_it_is_ready(browser: Browser, live: Live) -> None:
    # How soon is a figure of bench/bench_console.py; here: the mark is made
    # once the threads are listed and the composer takes text.
    for number in range(10):
        await live.client.create_thread(f"thread {number}")
    console = await open_console(browser, live.url)
    await console.page.reload()
    await expect(console.page.locator("body[data-ready=true]")).to_be_attached()
    await expect(console.page.get_by_test_id("thread-list-item")).to_have_count(10)
    assert await console.page.evaluate("performance.getEntriesByName('console-ready').length") == 1
    console.assert_clean()


async def test_a_long_answer_is_shown_whole(
    browser: Browser, live: Live, fake_llm: FakeLLM
) -> None:
    # Whether its rendering keeps up is a figure of bench/bench_console.py.
    fake_llm.backend.script(Reply.count(2000, delay=0.001))
    console = await open_console(browser, live.url)

    await console.send("Say a lot")
    answer = console.page.get_by_test_id("message-assistant")
    await expect(answer).to_contain_text("tok1999", timeout=60_000)
    await console.answer_done()
    await expect(answer).to_contain_text("tok0 tok1 tok2")
    console.assert_clean()
