"""Streaming and listing benchmark of chatkit-server, each figure against a baseline.

Usage::

    .venv/bin/python bench/bench_streaming.py                 # everything (~5 min on 2 cores)
    .venv/bin/python bench/bench_streaming.py --quick         # all figures, < 2 min
    .venv/bin/python bench/bench_streaming.py --only stream ttft
    .venv/bin/python bench/bench_streaming.py --only lists-sqlite --rows-scale 0.1
    .venv/bin/python bench/bench_streaming.py --only concurrent --workers 2

Each figure starts the real server (``python -m chatkit_server.cli serve``)
as a subprocess on 127.0.0.1, on its own SQLite file in a temporary
directory, pointed at a loopback fake OpenAI-compatible backend running in
another subprocess (``bench/fake_backend_server.py``). Load comes from this
process over HTTP (aiohttp, SSE read incrementally). Every figure is printed as
one line with its baseline measured in the same run and the ratio, then a
table sums everything up. Targets are reported as PASS or MISS; the exit
status is non-zero only when a figure crashed.

Figures (``--only`` names):

- ``stream``: full-stream time of a 200-token answer at 100 tokens/s through
  ``threads.create``, against reading the same backend stream directly.
- ``cpu``: server CPU microseconds per streamed token and aggregate tokens/s
  with 8 concurrent unpaced 2000-token answers, against direct backend reads.
- ``ttft``: time to the first assistant text delta minus the backend's own
  time to its first content chunk, over 50 turns on one thread (and a few
  new threads).
- ``concurrent``: 500 simultaneous 200-token answers at 20 tokens/s:
  errors, p50/p99 stream time against the ideal 10 s, peak server RSS.
- ``lists-sqlite``, ``lists-postgres``: ``threads.list`` and ``items.list``
  latency with 100k threads and 1M items (``--rows-scale`` shrinks them),
  against a ``GET /healthz`` round trip. PostgreSQL is
  ``$CHATKIT_TEST_POSTGRES_URL`` or ``postgresql+asyncpg://postgres@127.0.0.1:5432/test``;
  a fresh database is created there and dropped afterwards.
- ``sessions-ttft``: on PostgreSQL, the extra time to the first delta with a
  session's client secret (credential, rate count, thread lease) against a
  server with sign-in off, turns alternating between the two.
- ``sessions-concurrent``: 500 simultaneous answers from 500 sessions on
  PostgreSQL: errors and p99 stream time against the ideal.
- ``slow-readers``: 20 clients reading long, fast answers at 100 bytes/s for
  60 s: the server's RSS rise against its idle RSS, and what is left 5 s
  after they left, round after round (``--slow-rounds``, default 3).
- ``pdf``: 50 answers at 20 tokens/s, alone and while a 200-page PDF is
  uploaded and its text extracted for a message: their p50/p99 time and
  longest wait between deltas, with the PDF against without it; the
  extraction's own time; that the model was given the PDF's text.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import NoReturn

# Run as a script: make the repository root importable even without the
# editable install (bench/ itself is already on sys.path as the script dir).
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from _common import QUICK, Ctx, Plan, run  # noqa: E402
from _concurrent import fig_concurrent  # noqa: E402
from _figures import fig_cpu, fig_stream, fig_ttft  # noqa: E402
from _harness import Report, machine_speed, raise_fd_limit  # noqa: E402

FIGURES = (
    "stream",
    "cpu",
    "ttft",
    "concurrent",
    "lists-sqlite",
    "lists-postgres",
    "sessions-ttft",
    "sessions-concurrent",
    "slow-readers",
    "pdf",
)


# Figure 5 lives in _lists.py, imported only when selected (it needs the store).


def fig_lists_sqlite(ctx: Ctx) -> None:
    from _lists import lists_figure

    url = f"sqlite+aiosqlite:///{(ctx.workdir / 'lists-sqlite' / 'lists.db').as_posix()}"
    lists_figure(ctx.report, "lists-sqlite", url, ctx.plan, ctx.workdir, run)


def fig_lists_postgres(ctx: Ctx) -> None:
    from _lists import lists_figure, postgres_database

    with postgres_database(ctx.postgres_url, run, ctx.report) as url:
        if url is None:
            return  # postgres_database explained why
        lists_figure(ctx.report, "lists-postgres", url, ctx.plan, ctx.workdir, run)


def fig_sessions_ttft(ctx: Ctx) -> None:
    from _sessions import fig_sessions_ttft

    fig_sessions_ttft(ctx)


def fig_sessions_concurrent(ctx: Ctx) -> None:
    from _sessions import fig_sessions_concurrent

    fig_sessions_concurrent(ctx)


def fig_slow_readers(ctx: Ctx) -> None:
    from _slow import fig_slow_readers

    fig_slow_readers(ctx)


def fig_pdf(ctx: Ctx) -> None:
    from _pdf import fig_pdf

    fig_pdf(ctx)


RUNNERS: dict[str, Callable[[Ctx], None]] = {
    "stream": fig_stream,
    "cpu": fig_cpu,
    "ttft": fig_ttft,
    "concurrent": fig_concurrent,
    "lists-sqlite": fig_lists_sqlite,
    "lists-postgres": fig_lists_postgres,
    "sessions-ttft": fig_sessions_ttft,
    "sessions-concurrent": fig_sessions_concurrent,
    "slow-readers": fig_slow_readers,
    "pdf": fig_pdf,
}


def _on_sigterm(signum: int, frame: object) -> NoReturn:
    # Unwind like Ctrl-C, so every figure's finally stops its subprocesses.
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--only", nargs="+", choices=FIGURES, metavar="NAME", help=str(FIGURES))
    parser.add_argument("--quick", action="store_true", help="shrink everything (< 2 minutes)")
    parser.add_argument(
        "--rows-scale",
        type=float,
        default=None,
        help="scale of the list figures' 100k threads / 1M items (default 1.0; 0.01 with --quick)",
    )
    parser.add_argument(
        "--postgres-url",
        default=os.environ.get("CHATKIT_TEST_POSTGRES_URL")
        or "postgresql+asyncpg://postgres@127.0.0.1:5432/test",
        help="PostgreSQL server to create the benchmark database on",
    )
    parser.add_argument(
        "--slow-rounds",
        type=int,
        default=None,
        help="rounds of the slow-readers figure (default 3)",
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=1,
        help="run the streaming figures' server with serve --workers N (default 1)",
    )
    args = parser.parse_args(argv)
    if args.workers < 1:
        parser.error("--workers must be at least 1")
    plan = QUICK if args.quick else Plan()
    if args.rows_scale is not None:
        if args.rows_scale <= 0:
            parser.error("--rows-scale must be positive")
        plan = replace(plan, rows_scale=args.rows_scale)
    if args.slow_rounds is not None:
        if args.slow_rounds < 1:
            parser.error("--slow-rounds must be at least 1")
        plan = replace(plan, slow_rounds=args.slow_rounds)
    signal.signal(signal.SIGTERM, _on_sigterm)
    fds = raise_fd_limit()
    selected = [name for name in FIGURES if not args.only or name in args.only]
    report = Report()
    print(
        f"chatkit-server benchmark: {', '.join(selected)}"
        f"{' (quick)' if args.quick else ''}; server workers {args.workers}; "
        f"{os.cpu_count()} cores, fd limit {fds}, "
        # Other work on the machine skews every figure: say how busy it was,
        # and how fast it runs Python now (a shared machine's speed drifts).
        f"load average {os.getloadavg()[0]:.2f}; machine speed {machine_speed():.1f} ms "
        "(a fixed Python workload; compare figures only between runs with similar values)",
        flush=True,
    )
    crashed = False
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="chatkit-bench-") as tmp:
        ctx = Ctx(plan, report, Path(tmp), args.postgres_url, workers=args.workers)
        for name in selected:
            t0 = time.perf_counter()
            try:
                RUNNERS[name](ctx)
            except KeyboardInterrupt:
                # The figure's finally blocks have stopped its subprocesses.
                print(f"[{name}] interrupted", flush=True)
                return 130
            except Exception as exc:
                crashed = True
                traceback.print_exc()
                report.crashed(name, f"{type(exc).__name__}: {exc}")
            print(f"[{name}] took {time.perf_counter() - t0:.1f} s", flush=True)
    elapsed = time.perf_counter() - started
    print(
        f"\nsummary ({elapsed:.0f} s, load average at the end {os.getloadavg()[0]:.2f}, "
        f"machine speed at the end {machine_speed():.1f} ms)\n"
        f"{report.table()}",
        flush=True,
    )
    return 1 if crashed else 0


if __name__ == "__main__":
    raise SystemExit(main())
