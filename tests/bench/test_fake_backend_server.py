"""The benchmarks' fake backend reports each streamed answer's start and end."""

from __future__ import annotations

import time
from pathlib import Path

import httpx

from chatkit_server.testing.fake_backend import FakeBackend, Reply
from chatkit_server.testing.live import ServerThread
from tests.scripts import load_script

SCRIPT = Path(__file__).resolve().parents[2] / "bench" / "fake_backend_server.py"


def _ask(url: str, *, stream: bool) -> None:
    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "stream": stream}
    response = httpx.post(f"{url}/v1/chat/completions", json=body, timeout=10)
    response.raise_for_status()


def test_bench_streams_lists_the_streamed_answers_begun_since_a_time() -> None:
    app = load_script(SCRIPT).BoundedRecords(FakeBackend(default=Reply.count(3, delay=0.01)))
    with ServerThread(app, log_config=None) as url:
        _ask(url, stream=True)  # before the burst: not listed
        since = time.monotonic()
        _ask(url, stream=True)
        _ask(url, stream=False)  # a title's kind of request: not a stream
        streams = httpx.get(f"{url}/bench/streams", params={"since": since}).json()["streams"]
        later = httpx.get(f"{url}/bench/streams", params={"since": time.monotonic()}).json()

    [answer] = streams
    assert answer["tokens"] == 3
    # The clock every process on the machine shares, so a client can place the answer.
    assert since <= answer["started_at"] <= answer["ended_at"] <= time.monotonic()
    assert answer["ended_at"] - answer["started_at"] >= 0.03  # three tokens, 10 ms apart
    assert later == {"streams": []}
