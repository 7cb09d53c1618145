"""Memory handed back once the last stream ended: cycles collected, the allocator trimmed."""

from __future__ import annotations

import asyncio
import gc
import json
import sys
import weakref
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest

from chatkit_server.http import idle
from chatkit_server.http.idle import OpenStreams, release_free_memory
from chatkit_server.http.sse import BatchedStreamingResponse
from chatkit_server.testing.client import user_input
from tests.http.test_sse import SCOPE, Recorder
from tests.live import Live


class Node:
    """A reference cycle when it points at itself."""

    def __init__(self) -> None:
        self.other: Any = self


@pytest.fixture
def no_automatic_collection() -> Iterator[None]:
    # As on a quiet server with the tuned thresholds: only an explicit
    # collection finds cycles.
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


class Releases:
    def __init__(self) -> None:
        self.calls = 0

    def __call__(self) -> None:
        self.calls += 1


async def _until(condition: Any, seconds: float = 5.0) -> None:
    for _ in range(int(seconds / 0.01)):
        if condition():
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"not within {seconds} s")


@pytest.mark.usefixtures("no_automatic_collection")
async def test_the_cycles_of_ended_streams_are_collected_and_memory_released() -> None:
    releases = Releases()
    streams = OpenStreams(quiet=0.05, min_interval=0.0, release=releases)
    with streams.open():
        left = weakref.ref(Node())

    assert left() is not None  # only a collection frees a cycle
    await _until(lambda: releases.calls == 1)
    assert left() is None
    assert streams.settled == 1


@pytest.mark.usefixtures("no_automatic_collection")
async def test_what_the_finalizers_of_collected_async_generators_leave_is_freed_too() -> None:
    # A collection cannot close a suspended async generator itself: the
    # event loop runs its aclose(), and what that leaves behind (here a
    # cycle, as an exception's traceback would be) needs a second collection.
    cleanup: list[weakref.ref[Node]] = []

    async def numbers(owner: Node) -> AsyncIterator[int]:
        try:
            yield 1
            yield 2
        finally:
            await asyncio.sleep(0)
            cleanup.append(weakref.ref(Node()))

    streams = OpenStreams(quiet=0.05, min_interval=0.0, release=Releases())
    with streams.open():
        node = Node()
        node.other = numbers(node)  # the generator's frame holds the node
        assert await anext(node.other) == 1
        left = weakref.ref(node)
        del node

    await _until(lambda: streams.settled == 1)
    assert left() is None
    assert len(cleanup) == 1
    assert cleanup[0]() is None


async def test_nothing_happens_while_a_stream_is_open() -> None:
    releases = Releases()
    streams = OpenStreams(quiet=0.02, min_interval=0.0, release=releases)
    with streams.open():
        with streams.open():
            pass
        await asyncio.sleep(0.1)
        assert releases.calls == 0
        assert streams.count == 1
    await _until(lambda: releases.calls == 1)
    assert streams.count == 0


async def test_a_stream_that_starts_in_the_quiet_time_puts_it_off() -> None:
    releases = Releases()
    streams = OpenStreams(quiet=0.1, min_interval=0.0, release=releases)
    with streams.open():
        pass
    await asyncio.sleep(0.05)
    with streams.open():
        await asyncio.sleep(0.1)  # past the first quiet time
        assert releases.calls == 0
    await _until(lambda: releases.calls == 1)


async def test_hand_backs_are_at_least_min_interval_apart() -> None:
    releases = Releases()
    streams = OpenStreams(quiet=0.01, min_interval=0.3, release=releases)
    with streams.open():
        pass
    await _until(lambda: releases.calls == 1)
    with streams.open():
        pass
    await asyncio.sleep(0.1)
    assert releases.calls == 1  # put off, not dropped
    await _until(lambda: releases.calls == 2)


async def test_close_stops_what_is_scheduled() -> None:
    releases = Releases()
    streams = OpenStreams(quiet=0.05, min_interval=0.0, release=releases)
    with streams.open():
        pass
    streams.close()
    await asyncio.sleep(0.15)
    assert releases.calls == 0


def test_memory_is_trimmed_with_glibc_and_left_alone_elsewhere(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    idle._malloc_trim.cache_clear()
    try:
        if sys.platform.startswith("linux") and idle._malloc_trim() is not None:
            assert release_free_memory() is True
        idle._malloc_trim.cache_clear()
        monkeypatch.setattr(sys, "platform", "darwin")
        assert release_free_memory() is False
    finally:
        idle._malloc_trim.cache_clear()


async def test_a_streamed_response_counts_itself_while_it_runs() -> None:
    streams = OpenStreams(quiet=0.01, min_interval=0.0, release=Releases())
    seen: list[int] = []

    async def frames() -> AsyncIterator[bytes]:
        seen.append(streams.count)
        yield b"a"

    recorder = Recorder()
    response = BatchedStreamingResponse(frames(), streams=streams, media_type="text/event-stream")
    await asyncio.wait_for(response(SCOPE, recorder.receive, recorder.send), 5)

    assert seen == [1]
    assert streams.count == 0
    await _until(lambda: streams.settled == 1)


async def test_the_server_hands_memory_back_after_an_answer(live: Live) -> None:
    body = json.dumps({"type": "threads.create", "params": {"input": user_input("hi")}})
    response = await live.client.post_raw(body)
    assert response.status_code == 200

    streams = live.state.streams
    assert streams.count == 0
    await _until(lambda: streams.settled >= 1, seconds=10.0)


async def test_a_burst_pauses_the_collector_until_fewer_streams_are_open() -> None:
    streams = OpenStreams(busy=3, gc_pause=10.0, release=Releases())
    assert gc.isenabled()
    with streams.open(), streams.open():
        assert gc.isenabled()
        with streams.open():
            assert not gc.isenabled()
            assert streams.collector_paused
        assert gc.isenabled()  # one stream fewer than busy: collecting again
    assert not streams.collector_paused
    streams.close()


async def test_the_pause_ends_by_itself_and_comes_at_most_once_per_interval() -> None:
    streams = OpenStreams(busy=1, gc_pause=0.05, gc_pause_interval=60.0, release=Releases())
    try:
        with streams.open():
            assert not gc.isenabled()
            await _until(gc.isenabled)  # still busy, but the pause is over
        with streams.open():
            assert gc.isenabled()  # a second burst within the interval: no pause
    finally:
        streams.close()
        gc.enable()


async def test_a_collector_switched_off_by_someone_else_stays_off() -> None:
    streams = OpenStreams(busy=1, release=Releases())
    gc.disable()
    try:
        with streams.open():
            assert not streams.collector_paused
        assert not gc.isenabled()
    finally:
        gc.enable()
        streams.close()


async def test_shutdown_switches_a_paused_collector_back_on() -> None:
    streams = OpenStreams(busy=1, gc_pause=60.0, release=Releases())
    context = streams.open()
    context.__enter__()
    assert not gc.isenabled()
    streams.close()
    assert gc.isenabled()
