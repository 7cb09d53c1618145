import re
import time

import chatkit.store

from chatkit_server.store.ids import ID_PREFIXES, new_id

ID_PATTERN = re.compile(r"^(?P<prefix>[a-z]+)_(?P<time>[0-9a-f]{12})(?P<random>[0-9a-f]{20})$")


def test_prefixes_match_the_sdk() -> None:
    assert dict(ID_PREFIXES) == chatkit.store._ID_PREFIXES


def test_shape_is_prefix_plus_128_bits() -> None:
    for prefix in ID_PREFIXES.values():
        value = new_id(prefix)
        match = ID_PATTERN.match(value)
        assert match, value
        assert match["prefix"] == prefix
        # 32 hex digits after the prefix: 48 bits of time + 80 of randomness.
        assert len(value) == len(prefix) + 1 + 32


def test_timestamp_is_current_milliseconds() -> None:
    before = time.time_ns() // 1_000_000
    value = new_id("thr")
    after = time.time_ns() // 1_000_000
    match = ID_PATTERN.match(value)
    assert match
    assert before <= int(match["time"], 16) <= after


def test_ids_are_roughly_time_ordered() -> None:
    first = new_id("msg")
    time.sleep(0.002)
    second = new_id("msg")
    assert first[4:16] < second[4:16]


def test_no_collision_in_100k() -> None:
    ids = {new_id("msg") for _ in range(100_000)}
    assert len(ids) == 100_000
