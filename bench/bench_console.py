"""Benchmark of the built-in console in a real browser (Debian's Chromium).

Usage::

    .venv/bin/python bench/bench_console.py            # 10 page loads, a 2,000-token answer

Two figures, each against a baseline measured in the same run:

- ``ready``: the console is interactive (its ``console-ready`` mark) after a
  reload, with ten threads to list, against loading ``GET /healthz`` in the
  same tab (a page that runs nothing). Target: 200 ms on loopback.
- ``render lag``: how long after the last byte of a 2,000-token answer the
  page shows its last token, against the stream's own length. Target: the
  page does not fall behind (a frame or so, well under the stream).

The server runs in this process on uvicorn (loopback fake backend, SQLite in a
temporary directory), as in the tests.
"""

from __future__ import annotations

import asyncio
import shutil
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from chatkit_server.app import create_app  # noqa: E402
from chatkit_server.settings import Settings  # noqa: E402
from chatkit_server.testing.client import ChatKitClient  # noqa: E402
from chatkit_server.testing.fake_backend import FakeBackend, Reply  # noqa: E402
from chatkit_server.testing.live import serve_app  # noqa: E402

LOADS = 10
ANSWER_TOKENS = 2000

_LAST_TOKEN_WATCH = """() => {
    window.lastTokenShown = null;
    new MutationObserver(() => {
        const answer = document.querySelector('[data-testid="message-assistant"]');
        if (window.lastTokenShown === null && answer?.textContent.includes('tok1999')) {
            window.lastTokenShown = performance.now();
        }
    }).observe(document.getElementById('items'),
               {subtree: true, childList: true, characterData: true});
}"""

_STREAM_TIMES = """() => {
    const streams = performance.getEntriesByType('resource')
        .filter((entry) => entry.name.endsWith('/chatkit'));
    const last = streams.reduce((a, b) => (a.responseEnd > b.responseEnd ? a : b));
    return [window.lastTokenShown, last.responseStart, last.responseEnd];
}"""


async def main() -> int:
    try:
        from playwright.async_api import async_playwright, expect
    except ImportError:
        print("bench_console: the playwright package is not installed", file=sys.stderr)
        return 2
    chromium = shutil.which("chromium")
    if chromium is None:
        print(
            "bench_console: Chromium is not installed (apt-get install chromium)", file=sys.stderr
        )
        return 2
    backend = FakeBackend(default=Reply.count(ANSWER_TOKENS, delay=0.001))
    with tempfile.TemporaryDirectory(prefix="chatkit-bench-console-") as tmp:
        async with serve_app(backend.app) as backend_url:
            settings = Settings(data_dir=Path(tmp), llm_base_url=f"{backend_url}/v1", titles=False)
            app = create_app(settings, migrate=True)
            async with serve_app(app) as url, ChatKitClient(url) as client:
                backend.script(*(Reply.text("ok") for _ in range(10)))
                for number in range(10):
                    await client.create_thread(f"thread {number}")
                async with async_playwright() as playwright:
                    browser = await playwright.chromium.launch(executable_path=chromium)
                    try:
                        page = await browser.new_page()
                        await page.goto(url + "/")
                        ready, baseline = [], []
                        for _ in range(LOADS):
                            await page.goto(url + "/healthz")
                            baseline.append(
                                await page.evaluate(
                                    "performance.getEntriesByType('navigation')[0].loadEventEnd"
                                )
                            )
                            await page.goto(url + "/")
                            await page.wait_for_selector("body[data-ready=true]")
                            ready.append(
                                await page.evaluate(
                                    "performance.getEntriesByName('console-ready')[0].startTime"
                                )
                            )
                        await page.evaluate(_LAST_TOKEN_WATCH)
                        await page.get_by_test_id("new-thread").click()
                        await page.get_by_test_id("composer-input").fill("Say a lot")
                        await page.get_by_test_id("composer-send").click()
                        # expect(), not wait_for_function: the page's CSP
                        # forbids the eval that the latter needs.
                        await expect(page.get_by_test_id("message-assistant")).to_contain_text(
                            "tok1999", timeout=120_000
                        )
                        shown, start, end = await page.evaluate(_STREAM_TIMES)
                    finally:
                        await browser.close()
    ready_ms, base_ms = statistics.median(ready), statistics.median(baseline)
    print(
        f"[console] ready after a reload (10 threads), median of {LOADS}: {ready_ms:.0f} ms"
        f" | baseline GET /healthz page {base_ms:.0f} ms | ratio {ready_ms / base_ms:.2f}x"
        f" | target <= 200 ms -> {'PASS' if ready_ms <= 200 else 'MISS'}"
    )
    lag, stream = shown - end, end - start
    print(
        f"[console] last of {ANSWER_TOKENS} tokens shown {lag:.0f} ms after the stream's last byte"
        f" | baseline the stream itself {stream:.0f} ms | ratio {lag / stream:.3f}x"
        f" | target: not behind (< 100 ms) -> {'PASS' if lag < 100 else 'MISS'}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(asyncio.run(main()))
