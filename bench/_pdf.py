"""Figure 9: paced streams keep their pace while a 200-page PDF is extracted.

Private to ``bench/bench_streaming.py``. One server, one fake backend; in
each round, 50 answers at 20 tokens/s run once on their own and once while
a 200-page PDF is uploaded (``POST /chatkit/attachments``) and sent in a
message of its own a second after they start, so that the server extracts
its text (in a child process, within ``MAX_PDF_PAGES`` and ``PDF_SECONDS``)
while they stream. The figures are the streams' p50 and p99 time, and the
p99 of each stream's longest wait between two text deltas, with the PDF
against without it in the same round (target: at most 1.25x).

The PDF is made here, the same bytes every run: every page holds 40 lines
of words, and the first line of every page a marker of its own. The fake
backend is asked afterwards whether a model request held the first page's
marker: the text was really extracted and given to the model. The
extraction's own time is measured too, alone, on the same bytes.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from typing import Any

import _streams as net
import aiohttp
from _common import Ctx, failures, run, stack
from _harness import Service, ms, percentile

from chatkit_server.files.pdf import pdf_text
from tests.files.pdfs import pdf_with_pages

# When the PDF is sent after the streams started: they are all streaming by then.
LEAD_SECONDS = 1.0
TARGET = 1.25
_WORDS = [
    "alpha",
    "bravo",
    "charlie",
    "delta",
    "echo",
    "foxtrot",
    "golf",
    "hotel",
    "india",
    "juliet",
    "kilo",
    "lima",
    "mike",
    "november",
    "oscar",
    "papa",
    "quebec",
    "romeo",
    "sierra",
    "tango",
    "uniform",
    "victor",
    "whiskey",
    "xray",
    "yankee",
    "zulu",
]


def marker(page: int) -> str:
    """The text only page ``page`` (from 0) of the benchmark's PDF holds."""
    return f"benchmark page {page} marker"


def benchmark_pdf(pages: int) -> bytes:
    """A PDF of ``pages`` pages of 40 lines of ten words each, the same every run."""
    texts = []
    for page in range(pages):
        lines = [marker(page)]
        for line in range(1, 40):
            start = page * 7 + line * 3
            lines.append(" ".join(_WORDS[(start + k) % len(_WORDS)] for k in range(10)))
        texts.append("\n".join(lines))
    return pdf_with_pages(*texts)


def fig_pdf(ctx: Ctx) -> None:
    p = ctx.plan
    data = benchmark_pdf(p.pdf_pages)
    started = time.perf_counter()
    alone = run(pdf_text(data))
    extraction = time.perf_counter() - started
    with stack(ctx, "pdf", tokens=p.pdf_tokens, delay=p.pdf_delay) as (backend, server):
        run(_pdf(ctx, backend, server, data))
    ctx.report.figure(
        "pdf",
        f"PDF text extraction alone, {p.pdf_pages} pages",
        value=f"{extraction:.2f} s",
        baseline=f"{alone.pages_read} of {alone.pages} pages read, {len(alone.text)} characters",
    )


async def _upload(http: aiohttp.ClientSession, server_url: str, data: bytes) -> tuple[float, str]:
    """A direct upload of the PDF: seconds, and the attachment's id."""
    form = aiohttp.FormData()
    form.add_field("file", data, filename="report.pdf", content_type="application/pdf")
    started = time.perf_counter()
    async with http.post(f"{server_url}/chatkit/attachments", data=form) as response:
        body = await response.json()
    if response.status != 200:
        raise RuntimeError(f"the PDF upload answered {response.status}: {body}")
    return time.perf_counter() - started, str(body["id"])


async def _pdf_turn(
    http: aiohttp.ClientSession, server_url: str, data: bytes
) -> tuple[float, net.Timing]:
    """Upload the PDF and send it in a new thread: the upload's seconds, the turn's timing."""
    upload, attachment_id = await _upload(http, server_url, data)
    message = {**net.user_input("What does this report say?"), "attachments": [attachment_id]}
    turn = await net.chatkit_stream(http, server_url, "threads.create", {"input": message})
    return upload, turn


async def _seen(http: aiohttp.ClientSession, backend_url: str, text: str) -> int:
    async with http.get(f"{backend_url}/bench/seen", params={"text": text}) as response:
        seen: int = (await response.json())["requests"]
        return seen


async def _streams(http: aiohttp.ClientSession, server_url: str, n: int) -> list[net.Timing]:
    return await asyncio.gather(
        *(net.create_thread(http, server_url, f"Question {i}") for i in range(n))
    )


async def _pdf(ctx: Ctx, backend: Service, server: Service, data: bytes) -> None:
    p, report = ctx.plan, ctx.report
    n, ideal = p.pdf_streams, p.pdf_tokens * p.pdf_delay
    label = f"{n} streams x {p.pdf_tokens} tokens at {1 / p.pdf_delay:.0f} tok/s"
    rounds: list[dict[str, Any]] = []
    async with net.client(connections=n + 20, read_timeout=120.0) as http:
        # Warm-up: lazy imports, and a first (small, unmarked) PDF extracted.
        await net.create_thread(http, server.url, "warm up")
        await _pdf_turn(http, server.url, pdf_with_pages("warm up"))
        for _ in range(p.pdf_rounds):
            alone = await _streams(http, server.url, n)
            started = time.perf_counter()
            streams = asyncio.ensure_future(_streams(http, server.url, n))
            await asyncio.sleep(LEAD_SECONDS)
            sent = time.perf_counter() - started
            upload, turn = await _pdf_turn(http, server.url, data)
            beside = await streams
            rounds.append(
                {"alone": alone, "beside": beside, "sent": sent, "upload": upload, "turn": turn}
            )
        seen_first = await _seen(http, backend.url, marker(0))
        seen_last = await _seen(http, backend.url, marker(p.pdf_pages - 1))
    problems = failures([t for r in rounds for t in r["alone"] + r["beside"]], p.pdf_tokens)
    problems += [f"PDF turn: {r['turn'].error}" for r in rounds if r["turn"].error]

    def ratio(figure: Any) -> float:
        return statistics.median(
            figure([t for t in r["beside"] if not t.error])
            / figure([t for t in r["alone"] if not t.error])
            for r in rounds
        )

    def stat(key: str, figure: Any) -> float:
        return statistics.median(figure([t for t in r[key] if not t.error]) for r in rounds)

    for name, pick in (("p50", 50), ("p99", 99)):

        def times(timings: list[net.Timing], pick: int = pick) -> float:
            return percentile([t.total for t in timings], pick)

        value = ratio(times)
        report.figure(
            "pdf",
            f"stream time {name} with the PDF extracted beside, {label}",
            value=f"{stat('beside', times):.2f} s",
            baseline=f"{stat('alone', times):.2f} s without (ideal {ideal:.2f} s)",
            ratio=value,
            target=f"<= {TARGET}x",
            passed=value <= TARGET and not problems,
        )

    def gaps(timings: list[net.Timing]) -> float:
        return percentile([t.gap for t in timings], 99)

    value = ratio(gaps)
    report.figure(
        "pdf",
        f"longest wait between two deltas, p99 of streams, {label}",
        value=ms(stat("beside", gaps)),
        baseline=f"{ms(stat('alone', gaps))} without (pace {ms(p.pdf_delay)})",
        ratio=value,
        target=f"<= {TARGET}x",
        passed=value <= TARGET and not problems,
    )
    # The PDF turn's first token comes once the text is extracted (and the
    # backend answered): extraction ran between its sending and then.
    firsts = [r["sent"] + r["upload"] + r["turn"].first for r in rounds]
    ends = [min(t.total for t in r["beside"] if not t.error) for r in rounds]
    report.figure(
        "pdf",
        "PDF turn: upload, then time to its first token (extraction included)",
        value=(
            f"{statistics.median(r['upload'] for r in rounds):.2f} s, then "
            f"{statistics.median(r['turn'].first for r in rounds):.2f} s"
        ),
        baseline=(
            f"sent {statistics.median(r['sent'] for r in rounds):.1f} s into the streams, "
            f"extracted by {statistics.median(firsts):.1f} s; the first stream ended at "
            f"{statistics.median(ends):.1f} s"
        ),
        target="extracted while the streams ran",
        passed=all(first < end for first, end in zip(firsts, ends, strict=True)),
    )
    report.figure(
        "pdf",
        "model requests holding the PDF's first page / its last page",
        value=f"{seen_first} / {seen_last}",
        baseline=f"{p.pdf_rounds} PDF turns; pages past the bound are not read",
        target=f">= {p.pdf_rounds} / 0",
        passed=seen_first >= p.pdf_rounds and seen_last == 0,
    )
    if problems:
        report.note("pdf", f"{len(problems)} failed streams, e.g. {problems[:3]}")
