"""Shared pieces of the benchmark figures: sizes, context, the server stack.

Private to ``bench/bench_streaming.py``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import _streams as net
import uvloop
from _harness import Report, Service, services, start_backend, start_server


@dataclass(frozen=True)
class Plan:
    """Sizes of every figure; ``QUICK`` shrinks them all."""

    stream_tokens: int = 200
    stream_delay: float = 0.010
    stream_runs: int = 7
    cpu_tokens: int = 2000
    cpu_streams: int = 8
    ttft_tokens: int = 20
    ttft_delay: float = 0.010
    ttft_turns: int = 50
    ttft_creates: int = 50
    conc_streams: int = 500
    conc_tokens: int = 200
    conc_delay: float = 0.050
    list_requests: int = 200
    rows_scale: float = 1.0
    pdf_streams: int = 50
    pdf_tokens: int = 200
    pdf_delay: float = 0.050
    pdf_pages: int = 200
    pdf_rounds: int = 3
    slow_rounds: int = 3


QUICK = Plan(
    stream_tokens=100,
    stream_runs=3,
    cpu_tokens=300,
    cpu_streams=4,
    ttft_turns=10,
    ttft_creates=3,
    conc_streams=50,
    conc_tokens=40,
    list_requests=30,
    rows_scale=0.01,
    pdf_tokens=100,
    pdf_rounds=1,
)


@dataclass
class Ctx:
    plan: Plan
    report: Report
    workdir: Path
    postgres_url: str
    workers: int = 1


def run(coro: Coroutine[Any, Any, Any]) -> Any:
    """Run one figure's async part on uvloop, as uvicorn runs the server."""
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(coro)


@contextmanager
def stack(ctx: Ctx, name: str, *, tokens: int, delay: float) -> Iterator[tuple[Service, Service]]:
    """A fake backend and a chatkit server on a fresh SQLite file, stopped on exit."""
    workdir = ctx.workdir / name
    workdir.mkdir(parents=True, exist_ok=True)
    backend = start_backend(tokens=tokens, delay=delay, workdir=workdir)
    with services(backend):
        url = f"sqlite+aiosqlite:///{(workdir / 'chatkit.db').as_posix()}"
        server = start_server(
            backend_url=backend.url, database_url=url, workdir=workdir, workers=ctx.workers
        )
        try:
            with services(server):
                yield backend, server
        finally:
            for problem in server.log_problems():
                ctx.report.note(name, f"server log: {problem}")


def failures(timings: list[net.Timing], tokens: int) -> list[str]:
    problems = [t.error for t in timings if t.error]
    short = [t for t in timings if not t.error and t.tokens != tokens]
    problems += [f"{t.tokens}/{tokens} tokens" for t in short]
    return problems
