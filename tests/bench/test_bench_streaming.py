"""Smoke test: the streaming benchmark runs end to end and prints its ratio lines."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "bench" / "bench_streaming.py"
# Two server start-ups (a few seconds each on two cores) plus a handful of
# short streams; the bound keeps a wedged benchmark from hanging the suite.
TIMEOUT = 90


def test_quick_run_prints_ratios_and_exits_zero() -> None:
    result = subprocess.run(
        [
            sys.executable,
            str(SCRIPT),
            "--quick",
            "--only",
            "stream",
            "ttft",
            "--rows-scale",
            "0.001",
        ],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        check=False,
    )
    output = result.stdout
    assert result.returncode == 0, output + result.stderr
    stream = [line for line in output.splitlines() if line.startswith("[stream] full stream")]
    assert len(stream) == 1, output
    assert " | ratio " in stream[0]
    assert stream[0].endswith(("PASS", "MISS")), stream[0]
    ttft = [line for line in output.splitlines() if line.startswith("[ttft] first assistant delta")]
    assert len(ttft) == 2, output
    assert all(" | ratio " in line for line in ttft)
    assert "CRASH" not in output
    assert "\nsummary" in output
