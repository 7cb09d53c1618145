"""The comparison benchmark runs two builds side by side and reports paired figures."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
BENCH = ROOT / "bench"
# Two server start-ups and a few short streams; the bound keeps a wedged run
# from hanging the suite.
TIMEOUT = 120


def _worktrees() -> str:
    return subprocess.run(
        ["git", "-C", str(ROOT), "worktree", "list"], capture_output=True, text=True, check=True
    ).stdout


def test_a_comparison_with_head_pairs_every_kind_and_cleans_up() -> None:
    if not (ROOT / ".git").exists():
        pytest.skip("needs a git checkout: it checks the other revision out")
    result = subprocess.run(
        [sys.executable, str(BENCH / "bench_compare.py"), "HEAD", "--rounds", "1"],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    number = r"-?\d+\.\d+"
    for kind in ("add_user_message", "create"):
        pattern = (
            rf"{kind}: this checkout p50 {number} ms, HEAD p50 {number} ms;"
            rf" paired difference p50 [+-]{number} ms"
            rf" \(95% interval [+-]{number} to [+-]{number} ms: (within noise|faster|slower);"
            r" this checkout faster in \d+% of 1 pairs\);"
            rf" server CPU per request {number} ms vs {number} ms \(({number}|nan)x\)"
        )
        assert any(re.fullmatch(pattern, line) for line in result.stdout.splitlines()), (
            result.stdout
        )
    # Each server runs its own build: the other one from its worktree.
    assert re.search(r"^HEAD: chatkit_server from \S*chatkit-compare-\S*$", result.stdout, re.M), (
        result.stdout
    )
    assert "chatkit-compare-" not in _worktrees()


def test_the_interval_of_a_clear_difference_excludes_zero_and_of_noise_holds_it() -> None:
    sys.path.insert(0, str(BENCH))
    try:
        from bench_compare import median_interval
    finally:
        sys.path.remove(str(BENCH))
    faster = [-0.001 + 0.0001 * (i % 7 - 3) for i in range(200)]
    low, high = median_interval(faster)
    assert low <= -0.001 <= high < 0
    noise = [0.001 * ((i * 37) % 11 - 5) for i in range(200)]
    low, high = median_interval(noise)
    assert low <= 0 <= high
    assert median_interval(noise) == (low, high)  # seeded: the same every time
