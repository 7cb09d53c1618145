"""Figures 1-3: full-stream time, CPU per token, time to first token.

Private to ``bench/bench_streaming.py``; see its docstring for what each
figure measures and against which baseline.
"""

from __future__ import annotations

import asyncio
import os
import statistics
import time

import _streams as net
from _common import Ctx, failures, run, stack
from _harness import Sampler, Service, ms, percentile

CPU_BASELINE_SECONDS = 1.0
CPU_BASELINE_MAX_ROUNDS = 50


# -- figure 1 ---------------------------------------------------------------------------


def fig_stream(ctx: Ctx) -> None:
    p = ctx.plan
    with stack(ctx, "stream", tokens=p.stream_tokens, delay=p.stream_delay) as (backend, server):
        run(_stream(ctx, backend, server))


async def _stream(ctx: Ctx, backend: Service, server: Service) -> None:
    p = ctx.plan
    async with net.client() as http:
        # Warm-up: the first run pays lazy imports and connection set-up.
        await net.backend_stream(http, backend.url)
        await net.create_thread(http, server.url, "warm up")
        base: list[net.Timing] = []
        ours: list[net.Timing] = []
        for run_index in range(p.stream_runs):
            base.append(await net.backend_stream(http, backend.url))
            ours.append(await net.create_thread(http, server.url, f"Question {run_index}"))
    problems = failures(base + ours, p.stream_tokens)
    ratio = statistics.median(o.total / b.total for o, b in zip(ours, base, strict=True))
    rate = 1 / p.stream_delay
    ctx.report.figure(
        "stream",
        f"full stream {p.stream_tokens} tokens at {rate:.0f} tok/s, median of {p.stream_runs}",
        value=f"{statistics.median(o.total for o in ours):.3f} s via threads.create",
        baseline=f"{statistics.median(b.total for b in base):.3f} s backend direct",
        ratio=ratio,
        target="<= 1.05x, 0 errors",
        passed=ratio <= 1.05 and not problems,
    )
    if problems:
        ctx.report.note("stream", f"{len(problems)} failed streams, e.g. {problems[:3]}")


# -- figure 2 ---------------------------------------------------------------------------


def fig_cpu(ctx: Ctx) -> None:
    p = ctx.plan
    with stack(ctx, "cpu", tokens=p.cpu_tokens, delay=0.0) as (backend, server):
        run(_cpu(ctx, backend, server))


async def _cpu(ctx: Ctx, backend: Service, server: Service) -> None:
    p = ctx.plan
    pids = {"server": server.pid, "backend": backend.pid, "client": os.getpid()}
    async with net.client(connections=p.cpu_streams * 2) as http:
        await net.create_thread(http, server.url, "warm up")
        base: list[net.Timing] = []
        with Sampler(backend.pid, pids) as direct:
            # Direct reads are an order of magnitude faster: repeat them for
            # at least a second so CPU accounting (10 ms ticks) means something.
            deadline = time.perf_counter() + CPU_BASELINE_SECONDS
            for _ in range(CPU_BASELINE_MAX_ROUNDS):
                base += await asyncio.gather(
                    *(net.backend_stream(http, backend.url) for _ in range(p.cpu_streams))
                )
                if time.perf_counter() >= deadline:
                    break
        with Sampler(server.pid, pids) as served:
            ours = await asyncio.gather(
                *(net.create_thread(http, server.url, f"Q{i}") for i in range(p.cpu_streams))
            )
    problems = failures([*base, *ours], p.cpu_tokens)
    base_tokens = sum(t.tokens for t in base) or 1
    our_tokens = sum(t.tokens for t in ours) or 1
    base_rate, our_rate = base_tokens / direct.wall, our_tokens / served.wall
    server_us = 1e6 * served.cpu["server"] / our_tokens
    backend_us = 1e6 * direct.cpu["backend"] / base_tokens
    label = f"{p.cpu_streams} concurrent unpaced {p.cpu_tokens}-token streams"
    ctx.report.figure(
        "cpu",
        f"server CPU per streamed token, {label}",
        value=f"{server_us:.0f} us/token",
        baseline=f"{backend_us:.0f} us/token fake backend itself",
        ratio=server_us / backend_us if backend_us else None,
    )
    ctx.report.figure(
        "cpu",
        f"aggregate throughput, {label}",
        value=f"{our_rate:,.0f} tokens/s via chatkit",
        baseline=f"{base_rate:,.0f} tokens/s backend direct",
        ratio=our_rate / base_rate,
    )
    ctx.report.note(
        "cpu",
        f"CPU busy during the chatkit run: server {served.cpu_percent('server'):.0f}%, "
        f"backend {served.cpu_percent('backend'):.0f}%, "
        f"client {served.cpu_percent('client'):.0f}% (of one core; {os.cpu_count()} cores)",
    )
    deltas = sum(t.deltas for t in ours) or 1
    ctx.report.note(
        "cpu",
        f"{our_tokens} tokens reached the client in {deltas} text deltas "
        f"({our_tokens / deltas:.1f} tokens per delta): unpaced tokens arrive faster than one "
        "stream is read, and those read together are merged",
    )
    if problems:
        ctx.report.note("cpu", f"{len(problems)} failed streams, e.g. {problems[:3]}")


# -- figure 3 ---------------------------------------------------------------------------


def fig_ttft(ctx: Ctx) -> None:
    p = ctx.plan
    with stack(ctx, "ttft", tokens=p.ttft_tokens, delay=p.ttft_delay) as (backend, server):
        run(_ttft(ctx, backend, server))


async def _ttft(ctx: Ctx, backend: Service, server: Service) -> None:
    p = ctx.plan
    report = ctx.report
    async with net.client() as http:
        first = await net.create_thread(http, server.url, "warm up")
        if first.thread_id is None:
            raise RuntimeError(f"threads.create made no thread: {first.error}")
        pairs: dict[str, list[tuple[net.Timing, net.Timing]]] = {"add": [], "create": []}
        for turn in range(p.ttft_turns):
            # Baseline right before each turn, so both see the same machine state.
            direct = await net.backend_stream(http, backend.url)
            served = await net.add_message(http, server.url, first.thread_id, f"Turn {turn}")
            pairs["add"].append((direct, served))
        for number in range(p.ttft_creates):
            direct = await net.backend_stream(http, backend.url)
            made = await net.create_thread(http, server.url, f"New {number}")
            pairs["create"].append((direct, made))
    every = [t for kind in pairs.values() for pair in kind for t in pair]
    problems = failures(every, p.ttft_tokens)
    base = [d.first for kind in pairs.values() for d, _ in kind]
    report.figure(
        "ttft",
        "backend's own time to first content chunk (direct read)",
        value=f"p50 {ms(percentile(base, 50))} / p95 {ms(percentile(base, 95))}",
    )
    labels = {
        "add": f"threads.add_user_message, {p.ttft_turns} turns on one thread",
        "create": f"threads.create, {p.ttft_creates} new threads",
    }
    for kind, label in labels.items():
        served = [s.first for _, s in pairs[kind]]
        direct = [d.first for d, _ in pairs[kind]]
        # Paired: each turn minus the backend read measured just before it.
        extra = [s - d for s, d in zip(served, direct, strict=True)]
        p50 = percentile(extra, 50)
        report.figure(
            "ttft",
            f"first assistant delta minus backend first chunk, {label}",
            value=f"p50 {ms(p50)} / p95 {ms(percentile(extra, 95))}",
            baseline=(
                f"TTFT p50 {ms(percentile(served, 50))} vs backend {ms(percentile(direct, 50))}"
            ),
            ratio=percentile(served, 50) / percentile(direct, 50),
            target="<= 6 ms p50",
            passed=p50 <= 0.006 and not problems,
        )
    if problems:
        report.note("ttft", f"{len(problems)} failed streams, e.g. {problems[:3]}")
