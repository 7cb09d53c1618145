"""The streaming benchmark runs end to end and reports each of its figures in shape.

Whether a figure meets its target is the benchmark's business (run it on a quiet
machine, see bench/bench_streaming.py): here PASS and MISS are both fine, but a
crash, a failed stream, a server log problem, a missing or malformed figure line,
or a summary that disagrees with the lines all fail.
"""

from __future__ import annotations

import re
import subprocess
import sys
import textwrap
from pathlib import Path

BENCH = Path(__file__).resolve().parents[2] / "bench"
# Two server start-ups (a few seconds each on two cores) and a handful of short
# streams; the bound keeps a wedged benchmark from hanging the suite.
TIMEOUT = 120

# Smaller than --quick: this checks that the figures are produced, not what they say, so
# one measured stream per figure is enough (--quick streams for ~15 s more). The plan is
# replaced before the script imports it; a rename in bench/ fails here, not silently.
RUN_TINY = textwrap.dedent(
    """
    import dataclasses, runpy, sys
    sys.path.insert(0, sys.argv[1])
    import _common
    _common.QUICK = dataclasses.replace(
        _common.QUICK, stream_tokens=20, stream_runs=1, ttft_turns=2, ttft_creates=1
    )
    sys.argv = [sys.argv[1] + "/bench_streaming.py", "--quick", "--only", "stream", "ttft"]
    runpy.run_path(sys.argv[0], run_name="__main__")
    """
)

_NUMBER = r"-?\d+\.\d+"
_MS = rf"{_NUMBER} ms"
# One regular expression per figure line the two figures print, in order.
EXPECTED = [
    rf"\[stream\] full stream 20 tokens at 100 tok/s, median of 1: {_NUMBER} s via threads.create"
    rf" \| baseline {_NUMBER} s backend direct \| ratio {_NUMBER}x"
    r" \| target <= 1.05x, 0 errors -> (PASS|MISS)",
    rf"\[ttft\] backend's own time to first content chunk \(direct read\):"
    rf" p50 {_MS} / p95 {_MS} -> info",
    rf"\[ttft\] first assistant delta minus backend first chunk, threads.add_user_message,"
    rf" 2 turns on one thread: p50 {_MS} / p95 {_MS} \| baseline TTFT p50 {_MS} vs backend"
    rf" {_MS} \| ratio {_NUMBER}x \| target <= 6 ms p50 -> (PASS|MISS)",
    rf"\[ttft\] first assistant delta minus backend first chunk, threads.create,"
    rf" 1 new threads: p50 {_MS} / p95 {_MS} \| baseline TTFT p50 {_MS} vs backend"
    rf" {_MS} \| ratio {_NUMBER}x \| target <= 6 ms p50 -> (PASS|MISS)",
]


def _run(script: str) -> tuple[str, list[str], list[str]]:
    """Run ``script`` on the bench folder: its output, its lines, and its figure lines."""
    result = subprocess.run(
        [sys.executable, "-c", script, str(BENCH)],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        check=False,
    )
    output = result.stdout
    assert result.returncode == 0, output + result.stderr
    lines = output.splitlines()
    figures = [line for line in lines if line.endswith((" -> PASS", " -> MISS", " -> info"))]
    return output, lines, figures


def test_a_tiny_run_reports_every_figure_in_shape() -> None:
    output, lines, figures = _run(RUN_TINY)
    assert len(figures) == len(EXPECTED), output
    for line, pattern in zip(figures, EXPECTED, strict=True):
        assert re.fullmatch(pattern, line), line
    # Anything else a figure prints is a problem: failed streams, server log lines, a crash.
    notes = [line for line in lines if line.startswith("[") and line not in figures]
    assert all(re.fullmatch(r"\[(stream|ttft)\] took \d+\.\d s", n) for n in notes), output
    # How fast the machine ran Python, at the start and at the end: figures
    # of runs on a machine of another speed do not compare.
    assert re.search(rf"; machine speed {_NUMBER} ms \(a fixed Python workload", lines[0]), output
    heading = next(x for x in lines if x.startswith("summary"))
    assert re.search(rf", machine speed at the end {_NUMBER} ms\)$", heading), output
    # The summary table holds the same figures with the same verdicts.
    summary = lines[lines.index(heading) + 3 :]
    assert len(summary) == len(figures), output
    for row, line in zip(summary, figures, strict=True):
        assert row.split()[0] == line[1 : line.index("]")]
        assert row.split()[-1] == line.rsplit(" ", 1)[1]


RUN_TINY_PDF = textwrap.dedent(
    """
    import dataclasses, runpy, sys
    sys.path.insert(0, sys.argv[1])
    import _common
    _common.QUICK = dataclasses.replace(
        _common.QUICK, pdf_streams=5, pdf_tokens=40, pdf_pages=120, pdf_rounds=1
    )
    sys.argv = [sys.argv[1] + "/bench_streaming.py", "--quick", "--only", "pdf"]
    runpy.run_path(sys.argv[0], run_name="__main__")
    """
)


def test_the_pdf_figure_gives_the_model_the_pdfs_text() -> None:
    output, lines, figures = _run(RUN_TINY_PDF)
    assert [line.split(":")[0] for line in figures] == [
        "[pdf] stream time p50 with the PDF extracted beside, 5 streams x 40 tokens at 20 tok/s",
        "[pdf] stream time p99 with the PDF extracted beside, 5 streams x 40 tokens at 20 tok/s",
        "[pdf] longest wait between two deltas, p99 of streams, 5 streams x 40 tokens at 20 tok/s",
        "[pdf] PDF turn",
        "[pdf] model requests holding the PDF's first page / its last page",
        "[pdf] PDF text extraction alone, 120 pages",
    ], output
    # The model was given the first page's text, and nothing past the page bound.
    assert re.fullmatch(r".*: 1 / 0 \|.* -> PASS", figures[4]), figures[4]
    assert "100 of 120 pages read" in figures[5]
    notes = [line for line in lines if line.startswith("[") and line not in figures]
    assert all(re.fullmatch(r"\[pdf\] took \d+\.\d s", n) for n in notes), output
