"""Identifier generation for threads, items and attachments.

The SDK's default ids are ``prefix_`` plus 8 hex digits: 32 bits, so a
collision becomes likely after roughly 80,000 items. Ours keep the SDK's
prefixes and add a 48-bit millisecond timestamp followed by 80 random bits,
written as 32 lowercase hex digits. The timestamp prefix makes ids roughly
time-ordered, so new rows land next to each other in the unique indexes
instead of at random pages.
"""

from __future__ import annotations

import re
import secrets
import time
from types import MappingProxyType
from typing import Final

from chatkit.store import StoreItemType

__all__ = ["ID_PREFIXES", "has_control_character", "new_id"]

# Mirrors ``chatkit.store._ID_PREFIXES`` (private in the SDK, hence the copy);
# tests/store/test_ids.py pins the two together.
ID_PREFIXES: Final[MappingProxyType[StoreItemType, str]] = MappingProxyType(
    {
        "thread": "thr",
        "message": "msg",
        "tool_call": "tc",
        "workflow": "wf",
        "task": "tsk",
        "attachment": "atc",
        "sdk_hidden_context": "shcx",
    }
)

_TIMESTAMP_BITS: Final = 48
_RANDOM_BITS: Final = 80
_TIMESTAMP_MASK: Final = (1 << _TIMESTAMP_BITS) - 1


def new_id(prefix: str) -> str:
    """Return a new identifier, e.g. ``msg_0193b0c4f1a25d1e0b6a4f9c8e7d2a10``.

    Args:
        prefix: The type prefix, without the trailing underscore (``"thr"``).

    Returns:
        ``prefix`` + ``_`` + 12 hex digits of Unix time in milliseconds +
        20 hex digits of randomness from :mod:`secrets` (128 bits in all).
    """
    millis = time.time_ns() // 1_000_000 & _TIMESTAMP_MASK
    return f"{prefix}_{millis:012x}{secrets.randbits(_RANDOM_BITS):020x}"


_CONTROL: Final = re.compile(r"[\x00-\x1f\x7f]")


def has_control_character(value: str) -> bool:
    """Whether ``value`` holds a control character (NUL included).

    No id this server makes holds one, and PostgreSQL refuses NUL in text
    outright: such an id is answered as an unknown one, without a query.
    """
    return _CONTROL.search(value) is not None
