"""Figure: the server's memory while clients read long, fast answers very slowly.

Private to ``bench/bench_streaming.py``. Twenty clients each start an answer
that the fake backend would send as fast as it can (tens of thousands of
tokens), then read 100 bytes a second. Without backpressure the server would
read every answer at the backend's speed and hold it (hundreds of MiB in a
minute); with it, the server reads only as fast as each client takes. The
baseline is the server's own RSS, idle after a warm-up, in the same run; the
figures are the rise during the slow reads, and what is left of it once the
clients are gone. Several rounds of the same (``--slow-rounds``) show whether
what is left is kept for reuse (it levels off) or lost (every round adds as
much again).
"""

from __future__ import annotations

import asyncio
import json
import time

import _streams as net
from _common import Ctx, run, stack
from _harness import Sampler, Service, rss_mib

CLIENTS = 20
READ_BYTES_PER_SECOND = 100
LONG_ANSWER_TOKENS = 100_000
# Seconds waited before the idle figure and after each round: longer than the
# server's quiet time (chatkit_server.http.idle.DEFAULT_QUIET) plus its work.
IDLE_WAIT = 3.0
AFTER_WAIT = 5.0


def fig_slow_readers(ctx: Ctx) -> None:
    with stack(ctx, "slow-readers", tokens=LONG_ANSWER_TOKENS, delay=0.0) as (backend, server):
        run(_slow_readers(ctx, backend, server))


async def _open_answer(url: str, text: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    host, port = url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    body = json.dumps(
        {"type": "threads.create", "params": {"input": net.user_input(text)}}
    ).encode()
    writer.write(
        b"POST /chatkit HTTP/1.1\r\nHost: bench\r\nContent-Type: application/json\r\n"
        b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body
    )
    await writer.drain()
    return reader, writer


async def _read_slowly(reader: asyncio.StreamReader, until: float) -> int:
    taken = 0
    while time.monotonic() < until:
        chunk = await reader.read(READ_BYTES_PER_SECOND)
        if not chunk:
            break
        taken += len(chunk)
        await asyncio.sleep(1.0)
    return taken


async def _slow_readers(ctx: Ctx, backend: Service, server: Service) -> None:
    report = ctx.report
    seconds = 15.0 if ctx.plan.conc_streams < 500 else 60.0
    rounds = ctx.plan.slow_rounds
    # Warm up with one answer read at full speed, so imports and caches are
    # in the idle figure, not in the rise.
    reader, writer = await _open_answer(server.url, "warm up")
    with_deadline = asyncio.timeout(120)
    async with with_deadline:
        while await reader.read(65536):
            pass
    writer.close()
    # Longer than the server's quiet time before it hands memory back
    # (chatkit_server.http.idle): the baseline is the server at rest.
    await asyncio.sleep(IDLE_WAIT)
    idle = rss_mib(server.pid)
    pids = {"server": server.pid, "backend": backend.pid}
    rises: list[float] = []
    lefts: list[float] = []
    taken: list[int] = []
    cpu = 0.0
    for _round in range(rounds):
        with Sampler(server.pid, pids) as usage:
            opened = [await _open_answer(server.url, f"Q{i}") for i in range(CLIENTS)]
            until = time.monotonic() + seconds
            taken += await asyncio.gather(*(_read_slowly(r, until) for r, _w in opened))
        rises.append(usage.peak_rss / 2**20 - idle)
        cpu = usage.cpu_percent("server")
        for _reader, client in opened:
            client.close()
        await asyncio.sleep(AFTER_WAIT)
        lefts.append(rss_mib(server.pid) - idle)
    label = f"{CLIENTS} clients reading {READ_BYTES_PER_SECOND} B/s for {seconds:.0f} s"
    rise = max(rises)
    report.figure(
        "slow-readers",
        f"server RSS rise, {label} (largest of {rounds} rounds)",
        value=f"{rise:.1f} MiB (peak {idle + rise:.0f} MiB)",
        baseline=f"{idle:.0f} MiB idle after warm-up",
        ratio=(idle + rise) / idle,
        target="< 50 MiB rise",
        passed=rise < 50,
    )
    report.figure(
        "slow-readers",
        f"of the first round's rise, left {AFTER_WAIT:.0f} s after the clients left",
        value=f"{lefts[0]:.1f} of {rises[0]:.1f} MiB",
        baseline=f"{idle:.0f} MiB idle",
        ratio=(idle + lefts[0]) / idle,
        target="less than half left",
        passed=lefts[0] < 0.5 * rises[0],
    )
    # A leak leaves as much again every round; memory kept for reuse is
    # reused by the next round, so what is left levels off.
    added = (lefts[-1] - lefts[0]) / (rounds - 1) if rounds > 1 else 0.0
    report.figure(
        "slow-readers",
        "left after each round (MiB above idle)",
        value=" / ".join(f"{left:.1f}" for left in lefts),
        baseline=f"{idle:.0f} MiB idle",
        ratio=(idle + lefts[-1]) / idle,
        target="levels off: each later round adds < 1/4 of the first rise",
        passed=added < 0.25 * rises[0],
    )
    report.note(
        "slow-readers",
        f"the clients took {sum(taken)} bytes in all; server CPU "
        f"{cpu:.0f}% of one core while they read (last round)",
    )
