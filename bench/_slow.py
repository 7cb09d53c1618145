"""Figure: the server's memory while clients read long, fast answers very slowly.

Private to ``bench/bench_streaming.py``. Twenty clients each start an answer
that the fake backend would send as fast as it can (tens of thousands of
tokens), then read 100 bytes a second. Without backpressure the server would
read every answer at the backend's speed and hold it (hundreds of MiB in a
minute); with it, the server reads only as fast as each client takes. The
baseline is the server's own RSS, idle after a warm-up, in the same run; the
figure is the rise during the slow reads, and what is left of it once the
clients are gone. A second round of the same shows whether what is left is
kept for reuse (the second round ends where the first did) or lost (it
grows by as much again).
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
    # Warm up with one answer read at full speed, so imports and caches are
    # in the idle figure, not in the rise.
    reader, writer = await _open_answer(server.url, "warm up")
    with_deadline = asyncio.timeout(120)
    async with with_deadline:
        while await reader.read(65536):
            pass
    writer.close()
    await asyncio.sleep(1.0)
    idle = rss_mib(server.pid)
    pids = {"server": server.pid, "backend": backend.pid}
    peaks: list[float] = []
    afters: list[float] = []
    taken: list[int] = []
    cpu = 0.0
    for _round in range(2):
        with Sampler(server.pid, pids) as usage:
            opened = [await _open_answer(server.url, f"Q{i}") for i in range(CLIENTS)]
            until = time.monotonic() + seconds
            taken += await asyncio.gather(*(_read_slowly(r, until) for r, _w in opened))
        peaks.append(usage.peak_rss / 2**20)
        cpu = usage.cpu_percent("server")
        for _reader, client in opened:
            client.close()
        await asyncio.sleep(5.0)
        afters.append(rss_mib(server.pid))
    peak, after = peaks[0], afters[0]
    label = f"{CLIENTS} clients reading {READ_BYTES_PER_SECOND} B/s for {seconds:.0f} s"
    report.figure(
        "slow-readers",
        f"server RSS rise, {label}",
        value=f"{peak - idle:.1f} MiB (peak {peak:.0f} MiB)",
        baseline=f"{idle:.0f} MiB idle after warm-up",
        ratio=peak / idle,
        target="< 50 MiB rise",
        passed=peak - idle < 50,
    )
    report.figure(
        "slow-readers",
        "server RSS 5 s after the clients left",
        value=f"{after:.0f} MiB",
        baseline=f"{idle:.0f} MiB idle",
        ratio=after / idle,
    )
    report.figure(
        "slow-readers",
        "the same again: RSS peak / 5 s after the clients left",
        value=f"{peaks[1]:.0f} / {afters[1]:.0f} MiB",
        baseline=f"first round {peak:.0f} / {after:.0f} MiB",
        ratio=afters[1] / after,
        target="second round ends where the first did (no loss)",
        passed=afters[1] - after < 0.5 * (after - idle) + 2,
    )
    report.note(
        "slow-readers",
        f"the clients took {sum(taken)} bytes in all; server CPU "
        f"{cpu:.0f}% of one core while they read (second round)",
    )
