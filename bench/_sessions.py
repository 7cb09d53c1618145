"""Figures 6-7: what sign-in with sessions costs, on PostgreSQL.

Private to ``bench/bench_streaming.py``.

- ``sessions-ttft``: two servers on one fresh PostgreSQL database, one with
  sign-in off, one with ``CHATKIT_ADMIN_KEY`` (every request carries a
  session's client secret: credential check, rate count and thread lease).
  Turns alternate between them, each paired with a direct backend read
  just before it; the figure is the difference of their p50 extra time to
  the first text delta (target: at most 1 ms).
- ``sessions-concurrent``: 500 simultaneous answers through the sessions
  server, each from its own session: errors and p99 against the ideal.

Sessions are minted through the server's REST API, as an operator's
backend mints them, just before their first request.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import Iterator
from contextlib import contextmanager

import _streams as net
from _common import Ctx, failures, run
from _concurrent import backend_answers, report_timeline
from _harness import Service, ms, percentile, services, start_backend, start_server
from _lists import postgres_database

ADMIN_KEY = secrets.token_urlsafe(32)
# Past DEFAULT_QUIET (1 s) and the collection that follows it.
IDLE_SETTLE_SECONDS = 3.0


@contextmanager
def _servers(
    ctx: Ctx, name: str, *, tokens: int, delay: float
) -> Iterator[tuple[Service, Service, Service] | None]:
    """A backend, a sign-in-off server and a sessions server, on one new database."""
    workdir = ctx.workdir / name
    workdir.mkdir(parents=True, exist_ok=True)
    with postgres_database(ctx.postgres_url, run, ctx.report, name) as url:
        if url is None:
            yield None
            return
        backend = start_backend(tokens=tokens, delay=delay, workdir=workdir)
        with services(backend):
            # One after the other: the first applies the migrations.
            signed = start_server(
                backend_url=backend.url,
                database_url=url,
                workdir=workdir,
                workers=ctx.workers,
                env={"CHATKIT_ADMIN_KEY": ADMIN_KEY, "CHATKIT_TITLES": "0"},
            )
            with services(signed):
                plain = start_server(
                    backend_url=backend.url,
                    database_url=url,
                    workdir=workdir,
                    workers=ctx.workers,
                    env={"CHATKIT_TITLES": "0"},
                )
                try:
                    with services(plain):
                        yield backend, plain, signed
                finally:
                    for server in (signed, plain):
                        for problem in server.log_problems():
                            ctx.report.note(name, f"server log: {problem}")


async def _mint(server: Service, count: int) -> list[str]:
    """Client secrets of ``count`` sessions, each for its own user.

    Minted as an operator's backend mints them: ``POST /v1/chatkit/sessions``
    on the server that then serves them (with ``--workers N``, on one of
    its processes).
    """
    body = {
        "workflow": {"id": "default", "tracing": {"enabled": False}},
        "expires_after": {"anchor": "created_at", "seconds": 3600},
        "rate_limits": {"max_requests_per_1_minute": 1000},
        "chatkit_configuration": {"automatic_thread_titling": {"enabled": False}},
    }
    headers = {"Authorization": f"Bearer {ADMIN_KEY}"}
    async with net.client() as http:

        async def one(n: int) -> str:
            async with http.post(
                f"{server.url}/v1/chatkit/sessions",
                json={**body, "user": f"bench-user-{n}"},
                headers=headers,
            ) as resp:
                if resp.status != 200:
                    raise RuntimeError(f"minting a session: HTTP {resp.status}")
                secret: str = (await resp.json())["client_secret"]
                return secret

        minted: list[str] = []
        for start in range(0, count, 20):  # a few at a time, as backends mint them
            minted += await asyncio.gather(*(one(n) for n in range(start, min(count, start + 20))))
        return minted


def fig_sessions_ttft(ctx: Ctx) -> None:
    p = ctx.plan
    with _servers(ctx, "sessions-ttft", tokens=p.ttft_tokens, delay=p.ttft_delay) as started:
        if started is None:
            return
        backend, plain, signed = started
        run(_ttft(ctx, backend, plain, signed))


async def _ttft(ctx: Ctx, backend: Service, plain: Service, signed: Service) -> None:
    # Twice the ttft figure's turns: the difference sought is a fraction of
    # a millisecond, smaller than the spread of either side.
    report, turns = ctx.report, 2 * ctx.plan.ttft_turns
    (secret,) = await _mint(signed, 1)
    async with net.client() as http:
        off = await net.create_thread(http, plain.url, "warm up")
        on = await net.create_thread(http, signed.url, "warm up", token=secret)
        if off.thread_id is None or on.thread_id is None:
            raise RuntimeError(f"threads.create failed: {off.error or on.error}")
        extra: dict[str, list[float]] = {"off": [], "on": []}
        served: list[net.Timing] = []
        for turn in range(turns):
            # Alternating which goes first, so neither gains from the order.
            order = ("off", "on") if turn % 2 == 0 else ("on", "off")
            for kind in order:
                direct = await net.backend_stream(http, backend.url)
                if kind == "off":
                    timing = await net.add_message(http, plain.url, off.thread_id, f"T{turn}")
                else:
                    timing = await net.add_message(
                        http, signed.url, on.thread_id, f"T{turn}", token=secret
                    )
                extra[kind].append(timing.first - direct.first)
                served.append(timing)
    problems = failures(served, ctx.plan.ttft_tokens)
    off_p50, on_p50 = percentile(extra["off"], 50), percentile(extra["on"], 50)
    # Each turn measures both servers back to back: the median of those
    # paired differences is steadier than the difference of the two medians.
    paired = percentile([on - off for on, off in zip(extra["on"], extra["off"], strict=True)], 50)
    report.figure(
        "sessions-ttft",
        f"first delta minus backend first chunk, PostgreSQL, {turns} turns each, "
        "with a session's client secret vs sign-in off",
        value=f"p50 {ms(on_p50)} with sessions (paired median {paired * 1000:+.2f} ms)",
        baseline=f"p50 {ms(off_p50)} sign-in off (medians {(on_p50 - off_p50) * 1000:+.2f} ms)",
        ratio=on_p50 / off_p50 if off_p50 > 0 else None,
        target="<= +1 ms p50",
        passed=paired <= 0.001 and not problems,
    )
    if problems:
        report.note("sessions-ttft", f"{len(problems)} failed streams, e.g. {problems[:3]}")


def fig_sessions_concurrent(ctx: Ctx) -> None:
    p = ctx.plan
    with _servers(ctx, "sessions-concurrent", tokens=p.conc_tokens, delay=p.conc_delay) as started:
        if started is None:
            return
        backend, plain, signed = started
        run(_concurrent(ctx, backend, plain, signed))


async def _concurrent(ctx: Ctx, backend: Service, plain: Service, signed: Service) -> None:
    p, report = ctx.plan, ctx.report
    n, ideal = p.conc_streams, p.conc_tokens * p.conc_delay
    tokens = await _mint(signed, n + 1)
    deadline = ideal * 6 + 120
    async with net.client(connections=max(600, n + 100), read_timeout=120.0) as http:
        await net.create_thread(http, plain.url, "warm up")
        await net.create_thread(http, signed.url, "warm up", token=tokens[-1])
        async with asyncio.timeout(deadline):
            base = await asyncio.gather(*(net.backend_stream(http, backend.url) for _ in range(n)))
        off_burst = time.monotonic()
        async with asyncio.timeout(deadline):
            off = await asyncio.gather(
                *(net.create_thread(http, plain.url, f"Q{i}") for i in range(n))
            )
        # The sign-in-off server hands its answers' memory back once it has
        # been idle for a second (chatkit_server/http/idle.py): a few hundred
        # ms of CPU after 500 answers, which would land on the next burst.
        await asyncio.sleep(IDLE_SETTLE_SECONDS)
        on_burst = time.monotonic()
        async with asyncio.timeout(deadline):
            on = await asyncio.gather(
                *(net.create_thread(http, signed.url, f"Q{i}", token=tokens[i]) for i in range(n))
            )
        answers = {
            "sign-in off": await backend_answers(
                http, backend.url, since=off_burst, until=on_burst, tokens=p.conc_tokens
            ),
            "a session each": await backend_answers(
                http, backend.url, since=on_burst, tokens=p.conc_tokens
            ),
        }
    direct = [t.total for t in base if not t.error]
    label = f"{n} x {p.conc_tokens} tokens at {1 / p.conc_delay:.0f} tok/s, PostgreSQL"
    for name, timings in (("sign-in off", off), ("a session each", on)):
        problems = failures(timings, p.conc_tokens)
        report.figure(
            "sessions-concurrent",
            f"errors, {label}, {name}",
            value=f"{len(problems)} of {n}",
            target="0",
            passed=not problems,
        )
        if problems:
            kinds = sorted({x[:120] for x in problems})[:5]
            report.note("sessions-concurrent", f"{name}: error kinds: {kinds}")
        done = [t.total for t in timings if not t.error] or [float("nan")]
        p99 = percentile(done, 99)
        report.figure(
            "sessions-concurrent",
            f"stream time p99, {label}, {name}",
            value=f"{p99:.2f} s (p50 {percentile(done, 50):.2f} s)",
            baseline=f"ideal {ideal:.2f} s (backend direct p99 {percentile(direct, 99):.2f} s)",
            ratio=p99 / ideal,
            target="<= 1.25x",
            passed=p99 / ideal <= 1.25,
        )
        firsts = [t.first for t in timings if not t.error]
        report_timeline(report, "sessions-concurrent", name, answers[name], done, firsts)
