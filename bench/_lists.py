"""Figure 5: ``threads.list`` and ``items.list`` latency on a large database.

Private to ``bench/bench_streaming.py``. The database is migrated with the
store's own ``upgrade``, filled by ``_seed.seed`` (100k threads of 10 items
plus one 10k-item thread at scale 1.0), then served by a real chatkit server
with no model backend (listing never reaches one). Latencies are taken over
HTTP, interleaving the kinds of request round by round so drift in machine
load hits them all alike, and compared with ``GET /healthz`` (an HTTP round
trip plus a ``SELECT 1``), the floor any ``/chatkit`` request stands on.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Coroutine, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import _streams as net
import sqlalchemy as sa
from _harness import Report, ms, percentile, services, start_server
from _seed import Seeded, seed
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import create_async_engine
from sqlalchemy.pool import NullPool

from chatkit_server.store import upgrade_async

Runner = Callable[[Coroutine[Any, Any, Any]], Any]

THREADS_AT_SCALE_1 = 100_000
ITEMS_PER_THREAD = 10
BIG_THREAD_ITEMS_AT_SCALE_1 = 10_000
PAGE = 20
WARMUP_ROUNDS = 10
TARGET_RATIO = 2.0


@contextmanager
def postgres_database(
    admin_url: str, run: Runner, report: Report, figure: str = "lists-postgres"
) -> Iterator[str | None]:
    """Create a fresh database on the server of ``admin_url``; drop it on exit.

    Yields None (after printing why) when PostgreSQL cannot be reached, so
    the caller reports the figure as skipped.
    """
    name = f"chatkit_bench_{secrets.token_hex(4)}"
    try:
        run(_admin(admin_url, f'CREATE DATABASE "{name}"'))
    except Exception as exc:
        reason = f"PostgreSQL at {admin_url} unavailable ({type(exc).__name__}: {exc})"
        report.skipped(figure, reason)
        yield None
        return
    try:
        yield make_url(admin_url).set(database=name).render_as_string(hide_password=False)
    finally:
        # FORCE: a server killed mid-request may leave a backend connected.
        run(_admin(admin_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


async def _admin(url: str, statement: str) -> None:
    # CREATE/DROP DATABASE cannot run in a transaction; asyncpg would wait
    # 60 s for an unreachable server by default.
    engine = create_async_engine(
        url, isolation_level="AUTOCOMMIT", poolclass=NullPool, connect_args={"timeout": 5}
    )
    try:
        async with engine.connect() as conn:
            await conn.execute(sa.text(statement))
    finally:
        await engine.dispose()


def lists_figure(
    report: Report, figure: str, url: str, plan: Any, workdir: Path, run: Runner
) -> None:
    """Migrate, seed and serve ``url``, then measure the list requests."""
    scale = plan.rows_scale
    # Enough rows for a deep page to exist whatever the scale.
    thread_count = max(100, round(THREADS_AT_SCALE_1 * scale))
    big_items = max(100, round(BIG_THREAD_ITEMS_AT_SCALE_1 * scale))
    figdir = workdir / figure
    figdir.mkdir(parents=True, exist_ok=True)
    run(upgrade_async(url))
    report.note(
        figure,
        f"seeding {thread_count:,} threads x {ITEMS_PER_THREAD} items + one thread of "
        f"{big_items:,} items (rows scale {scale:g})",
    )
    seeded: Seeded = run(
        seed(
            url,
            thread_count=thread_count,
            items_per_thread=ITEMS_PER_THREAD,
            big_thread_items=big_items,
            progress=lambda line: report.note(figure, line),
        )
    )
    rows = len(seeded.thread_ids) + seeded.items
    report.figure(
        figure,
        "seeding (batched Core inserts, store tables and serialization)",
        value=f"{len(seeded.thread_ids):,} threads + {seeded.items:,} items "
        f"in {seeded.seconds:.1f} s ({rows / seeded.seconds:,.0f} rows/s)",
    )
    server = start_server(backend_url=None, database_url=url, workdir=figdir)
    with services(server):
        run(_measure(report, figure, server.url, seeded, plan.list_requests))


async def _measure(
    report: Report, figure: str, server_url: str, seeded: Seeded, requests: int
) -> None:
    # Newest first is the default order of both listings; "deep" starts after
    # the middle entry, so the keyset lookup and scan run far from the top.
    threads_newest_first = seeded.thread_ids[::-1]
    items_newest_first = seeded.big_item_ids[::-1]
    big = seeded.big_thread_id
    cases: dict[str, tuple[str, dict[str, Any]]] = {
        "threads.list first page": ("threads.list", {"limit": PAGE}),
        "threads.list deep page": (
            "threads.list",
            {"limit": PAGE, "after": threads_newest_first[len(threads_newest_first) // 2]},
        ),
        "items.list first page": ("items.list", {"thread_id": big, "limit": PAGE}),
        "items.list deep page": (
            "items.list",
            {
                "thread_id": big,
                "limit": PAGE,
                "after": items_newest_first[len(items_newest_first) // 2],
            },
        ),
    }
    times: dict[str, list[float]] = {name: [] for name in ("healthz", *cases)}
    async with net.client() as http:
        for round_index in range(WARMUP_ROUNDS + requests):
            health = await net.get_timed(http, f"{server_url}/healthz")
            measured = round_index >= WARMUP_ROUNDS
            if measured:
                times["healthz"].append(health)
            for name, (kind, params) in cases.items():
                elapsed, body = await net.chatkit_call(http, server_url, kind, params)
                if len(body.get("data", ())) != PAGE or not body.get("has_more"):
                    raise RuntimeError(f"{name}: unexpected page {str(body)[:300]}")
                if measured:
                    times[name].append(elapsed)
    floor = percentile(times["healthz"], 50)
    report.figure(
        figure,
        "GET /healthz round trip (HTTP floor + SELECT 1)",
        value=f"p50 {ms(floor)} / p95 {ms(percentile(times['healthz'], 95))}",
    )
    scope = {
        "threads": f"of {len(seeded.thread_ids):,} threads",
        "items.": f"of a {len(seeded.big_item_ids):,}-item thread ({seeded.items:,} items in all)",
    }
    for name in cases:
        p50 = percentile(times[name], 50)
        where = scope["threads" if name.startswith("threads") else "items."]
        report.figure(
            figure,
            f"{name} (limit {PAGE}) {where}, {requests} requests",
            value=f"p50 {ms(p50)} / p95 {ms(percentile(times[name], 95))}",
            baseline=f"healthz p50 {ms(floor)}",
            ratio=p50 / floor,
            target=f"<= {TARGET_RATIO:g}x healthz p50",
            passed=p50 <= TARGET_RATIO * floor,
        )
