"""The history-input benchmark times both ways of giving a run its history and reports them."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[2] / "bench"


def test_it_reports_both_ways_for_every_history_length() -> None:
    result = subprocess.run(
        [sys.executable, str(BENCH / "bench_history_input.py"), "--runs", "3"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )

    # Non-zero also when the two ways would send the backend different messages.
    assert result.returncode == 0, result.stdout + result.stderr
    number = r"\d+\.\d+"
    pattern = (
        rf"(\d+) turns: run to model call p50 {number} ms with EarlierTurns,"
        rf" {number} ms given the whole history \(baseline\); ratio {number}x"
    )
    turns = [
        int(m.group(1)) for m in map(re.compile(pattern).fullmatch, result.stdout.splitlines()) if m
    ]
    assert turns == [5, 25, 50], result.stdout
