"""Fill a chatkit-server database with many threads and items, fast.

Private to ``bench/bench_streaming.py``. Going through ``SQLStore`` would
cost a transaction (and on SQLite an fsync) per item: hours for a million.
So rows are written with batched Core inserts, but everything that decides
what a row holds is the store's own: its table definitions
(``chatkit_server.store.tables``), its id generator (``new_id``), and the
same serialization ``SQLStore`` uses (real ChatKit ``ThreadMetadata``,
``UserMessageItem`` and ``AssistantMessageItem`` models, dumped with
``model_dump_json`` exactly as ``save_thread`` and ``add_thread_item`` do).
``SQLStore`` has no bulk-insert helper and keeps its row builders private,
so the few lines that build a row are mirrored here (see ``_thread_row`` and
``_item_row``). All threads belong to the single local user, so a server
with authentication off lists them.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from chatkit.types import (
    AssistantMessageContent,
    AssistantMessageItem,
    InferenceOptions,
    ThreadItem,
    ThreadMetadata,
    UserMessageItem,
    UserMessageTextContent,
)
from sqlalchemy.ext.asyncio import AsyncEngine

from chatkit_server.context import LOCAL_USER
from chatkit_server.store import new_id
from chatkit_server.store.database import create_engine
from chatkit_server.store.ids import ID_PREFIXES
from chatkit_server.store.tables import thread_items, threads

# The SDK stamps items with naive local time; a fixed naive epoch keeps the
# seeded rows deterministic in shape.
EPOCH = datetime(2025, 1, 1, 9, 0, 0)
# ThreadMetadata's fields: save_thread stores only these (a full Thread's
# items are dropped).
THREAD_FIELDS = set(ThreadMetadata.model_fields)
BATCH_ROWS = 20_000
ANSWER = (
    "Here is a plan that balances travel time and rest. On the first day, arrive early, "
    "check in, and take the short loop trail to get used to the altitude. On the second "
    "day, start at dawn for the long ridge walk and pack more water than you think you "
    "need. On the third day, visit the lake, then leave after lunch to avoid traffic."
)


@dataclass
class Seeded:
    """What was written, for choosing cursors afterwards."""

    thread_ids: list[str] = field(default_factory=list)  # oldest first (seq order)
    big_thread_id: str = ""
    big_item_ids: list[str] = field(default_factory=list)  # oldest first
    items: int = 0
    seconds: float = 0.0


def _thread_row(thread: ThreadMetadata) -> dict[str, Any]:
    # Mirrors SQLStore.save_thread.
    return {
        "id": thread.id,
        "user_id": LOCAL_USER,
        "created_at": thread.created_at,
        "data": thread.model_dump_json(include=THREAD_FIELDS),
    }


def _item_row(item: ThreadItem) -> dict[str, Any]:
    # Mirrors SQLStore._upsert_item (created_at is naive, as the SDK makes it).
    return {
        "thread_id": item.thread_id,
        "id": item.id,
        "type": item.type,
        "created_at": item.created_at,
        "data": item.model_dump_json(),
    }


def _message(thread_id: str, index: int, at: datetime) -> ThreadItem:
    item_id = new_id(ID_PREFIXES["message"])
    if index % 2 == 0:
        return UserMessageItem(
            id=item_id,
            thread_id=thread_id,
            created_at=at,
            content=[
                UserMessageTextContent(
                    text=f"Question {index // 2}: how should I plan a three-day mountain trip?"
                )
            ],
            inference_options=InferenceOptions(),
        )
    return AssistantMessageItem(
        id=item_id,
        thread_id=thread_id,
        created_at=at,
        content=[AssistantMessageContent(text=ANSWER)],
    )


class _Writer:
    """Buffers rows and inserts them in batches, reporting progress every ~10%."""

    def __init__(self, engine: AsyncEngine, total: int, progress: Callable[[str], None]) -> None:
        self.engine = engine
        self.total = total
        self.progress = progress
        self.threads: list[dict[str, Any]] = []
        self.items: list[dict[str, Any]] = []
        self.written = 0
        self.next_report = 0.1
        self.start = time.perf_counter()

    async def add(self, thread: dict[str, Any] | None, items: list[dict[str, Any]]) -> None:
        if thread is not None:
            self.threads.append(thread)
        self.items.extend(items)
        if len(self.threads) + len(self.items) >= BATCH_ROWS:
            await self.flush()

    async def flush(self) -> None:
        if not (self.threads or self.items):
            return
        # Threads first: items reference them by foreign key.
        async with self.engine.begin() as conn:
            if self.threads:
                await conn.execute(threads.insert(), self.threads)
            if self.items:
                await conn.execute(thread_items.insert(), self.items)
        self.written += len(self.threads) + len(self.items)
        self.threads, self.items = [], []
        if self.written >= self.next_report * self.total:
            elapsed = time.perf_counter() - self.start
            rate = self.written / elapsed if elapsed else 0.0
            self.progress(
                f"seeded {self.written:,}/{self.total:,} rows "
                f"({100 * self.written / self.total:.0f}%, {elapsed:.0f} s, {rate:,.0f} rows/s)"
            )
            # One line per crossed tenth, however many tenths a batch crossed.
            self.next_report = (self.written * 10 // self.total + 1) / 10


async def seed(
    url: str,
    *,
    thread_count: int,
    items_per_thread: int,
    big_thread_items: int,
    progress: Callable[[str], None],
) -> Seeded:
    """Write ``thread_count`` threads of ``items_per_thread`` items, plus one big thread.

    The big thread (``big_thread_items`` items) is the oldest, so it is the
    last entry of the default (newest first) thread listing. The schema must
    already be migrated.
    """
    seeded = Seeded()
    total = 1 + thread_count + big_thread_items + thread_count * items_per_thread
    engine = create_engine(url)
    writer = _Writer(engine, total, progress)
    try:
        at = EPOCH
        big = ThreadMetadata(id=new_id(ID_PREFIXES["thread"]), created_at=at, title="Big thread")
        seeded.big_thread_id = big.id
        seeded.thread_ids.append(big.id)
        await writer.add(_thread_row(big), [])
        for index in range(big_thread_items):
            item = _message(big.id, index, at + timedelta(milliseconds=index))
            seeded.big_item_ids.append(item.id)
            await writer.add(None, [_item_row(item)])
        for number in range(thread_count):
            at = EPOCH + timedelta(minutes=number + 1)
            thread = ThreadMetadata(
                id=new_id(ID_PREFIXES["thread"]), created_at=at, title=f"Trip plan {number}"
            )
            seeded.thread_ids.append(thread.id)
            rows = [
                _item_row(_message(thread.id, index, at + timedelta(seconds=index)))
                for index in range(items_per_thread)
            ]
            await writer.add(_thread_row(thread), rows)
        await writer.flush()
        if engine.dialect.name == "postgresql":
            # Autovacuum would ANALYZE a freshly loaded table within a minute
            # or so in production; do it now so plans match that steady state.
            async with engine.begin() as conn:
                await conn.exec_driver_sql("ANALYZE threads")
                await conn.exec_driver_sql("ANALYZE thread_items")
    finally:
        await engine.dispose()
    seeded.items = big_thread_items + thread_count * items_per_thread
    seeded.seconds = time.perf_counter() - writer.start
    return seeded
