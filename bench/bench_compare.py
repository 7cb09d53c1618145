"""Time to first delta of this checkout against another revision, interleaved in one run.

Usage::

    .venv/bin/python bench/bench_compare.py HEAD~1            # 200 rounds, 6-7 min on 2 cores
    .venv/bin/python bench/bench_compare.py main --rounds 400

A shared machine's speed drifts by tens of percent within an hour, which is
more than most changes to the time to the first token are worth: two runs of
``bench_streaming.py --only ttft`` an hour apart compare the hours, not the
builds. Here both builds run at once, each a server (``chatkit-server serve``)
on its own SQLite file, in front of one fake backend: the other revision is
checked out into a temporary git worktree and its server imports its own
``chatkit_server`` (the virtualenv's other packages are shared). After a
warm-up request of each kind, each round sends, to both servers in a random
order, one ``threads.add_user_message`` on a thread that grows to 50 turns
(then a new one) and one ``threads.create``, each right after a direct read
of the backend. Every request's time to its
first delta minus that read's time to its first chunk is paired with the
other build's in the same round. The CPU time each server used during its
requests is summed too: less noisy than the times on a machine whose speed
drifts, since both builds run through the same minutes.

Printed for each kind of request: both builds' p50 and the p50 of the paired
differences (this checkout minus the other: negative is faster) with its 95%
bootstrap interval (one that holds zero is noise: two runs of the same pair
of builds have disagreed by a millisecond on a drifting machine), how
often this checkout was the faster of a pair, and each build's server CPU
time per request; first, where each server imports ``chatkit_server`` from
(a run stops if the other build would not run its own code). The exit
status is non-zero only when something failed.
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import _streams as net
from _common import run
from _harness import Service, cpu_seconds, machine_speed, services, start_backend, start_server

ROOT = Path(__file__).resolve().parents[1]
TURNS_PER_THREAD = 50
KINDS = ("add_user_message", "create")


@contextmanager
def worktree(revision: str) -> Iterator[Path]:
    """``revision`` checked out in a temporary git worktree, removed on exit."""
    folder = Path(tempfile.mkdtemp(prefix="chatkit-compare-")) / "tree"
    subprocess.run(
        ["git", "-C", str(ROOT), "worktree", "add", "--detach", "--quiet", str(folder), revision],
        check=True,
    )
    try:
        yield folder
    finally:
        subprocess.run(
            ["git", "-C", str(ROOT), "worktree", "remove", "--force", str(folder)], check=False
        )
        shutil.rmtree(folder.parent, ignore_errors=True)


async def _rounds(
    backend: Service, servers: dict[str, Service], rounds: int
) -> tuple[dict[str, dict[str, list[float]]], dict[str, dict[str, float]]]:
    """Each build's extra time to first delta, per kind of request, round by round.

    And the CPU time each build's server used during its requests, per kind
    (every thread of the process; read in clock ticks, which average out
    over the rounds).
    """
    extra: dict[str, dict[str, list[float]]] = {name: {k: [] for k in KINDS} for name in servers}
    cpu: dict[str, dict[str, float]] = {name: dict.fromkeys(KINDS, 0.0) for name in servers}
    threads: dict[str, tuple[str, int]] = {}
    async with net.client() as http:
        for service in servers.values():  # first requests take paths no later one does
            warm = await net.create_thread(http, service.url, "warm up")
            if warm.thread_id is not None:
                await net.add_message(http, service.url, warm.thread_id, "warm up")
        for number in range(rounds):
            names = list(servers)
            random.shuffle(names)
            for name in names:
                url = servers[name].url
                thread_id, turns = threads.get(name, ("", TURNS_PER_THREAD))
                if turns >= TURNS_PER_THREAD:
                    made = await net.create_thread(http, url, "a new thread")
                    if made.thread_id is None:
                        raise RuntimeError(f"{name}: threads.create made no thread: {made.error}")
                    thread_id, turns = made.thread_id, 0
                threads[name] = (thread_id, turns + 1)
                for kind in KINDS:
                    direct = await net.backend_stream(http, backend.url)
                    before = cpu_seconds(servers[name].pid)
                    if kind == "create":
                        served = await net.create_thread(http, url, f"New {number}")
                    else:
                        served = await net.add_message(http, url, thread_id, f"Turn {number}")
                    cpu[name][kind] += cpu_seconds(servers[name].pid) - before
                    for timing in (direct, served):
                        if timing.error:
                            raise RuntimeError(f"{name} {kind}: {timing.error}")
                    extra[name][kind].append(served.first - direct.first)
    return extra, cpu


def _check_imports(name: str, env: dict[str, str], root: Path) -> None:
    """Fail unless a server started with ``env`` imports ``chatkit_server`` from ``root``.

    Asked of the interpreter the servers run on, from the directory they run in.
    """
    found = subprocess.run(
        [sys.executable, "-c", "import chatkit_server; print(chatkit_server.__file__)"],
        cwd=ROOT,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    if not Path(found).resolve().is_relative_to(root.resolve()):
        raise SystemExit(f"{name}: the server would import chatkit_server from {found}")
    print(f"{name}: chatkit_server from {Path(found).parent}")


def median_interval(
    values: list[float], *, level: float = 0.95, resamples: int = 2000
) -> tuple[float, float]:
    """A bootstrap confidence interval of the median of ``values``.

    Seeded, so one run's figures print the same interval every time. On a
    machine whose speed drifts, two comparisons of the same builds can
    disagree by more than a change is worth; an interval that holds zero
    says the run could not tell the builds apart.
    """
    chooser = random.Random(0)
    medians = sorted(
        statistics.median(chooser.choices(values, k=len(values))) for _ in range(resamples)
    )
    cut = int(resamples * (1 - level) / 2)
    return medians[cut], medians[resamples - 1 - cut]


def _report(
    extra: dict[str, dict[str, list[float]]], cpu: dict[str, dict[str, float]], base: str
) -> None:
    for kind in KINDS:
        ours, theirs = extra["this checkout"][kind], extra[base][kind]
        ours_cpu, theirs_cpu = (cpu[name][kind] / len(ours) for name in ("this checkout", base))
        differences = [a - b for a, b in zip(ours, theirs, strict=True)]
        faster = sum(1 for d in differences if d < 0) / len(differences)
        low, high = median_interval(differences)
        verdict = "within noise" if low <= 0 <= high else "faster" if high < 0 else "slower"
        print(
            f"{kind}: this checkout p50 {statistics.median(ours) * 1e3:.2f} ms,"
            f" {base} p50 {statistics.median(theirs) * 1e3:.2f} ms;"
            f" paired difference p50 {statistics.median(differences) * 1e3:+.2f} ms"
            f" (95% interval {low * 1e3:+.2f} to {high * 1e3:+.2f} ms: {verdict};"
            f" this checkout faster in {faster:.0%} of {len(differences)} pairs);"
            f" server CPU per request {ours_cpu * 1e3:.2f} ms vs {theirs_cpu * 1e3:.2f} ms"
            f" ({ours_cpu / theirs_cpu if theirs_cpu else float('nan'):.3f}x)"
        )


def main() -> int:
    """Compare this checkout with ``revision``; print the figures."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("revision", help="the git revision to compare with (HEAD~1, main ...)")
    parser.add_argument("--rounds", type=int, default=200, help="rounds (default 200)")
    args = parser.parse_args()
    if args.rounds < 1:
        parser.error("--rounds must be at least 1")
    print(f"machine speed {machine_speed():.1f} ms at the start (see bench_streaming.py)")
    base = args.revision
    with worktree(base) as tree, tempfile.TemporaryDirectory() as folder:
        workdir = Path(folder)
        backend = start_backend(tokens=20, delay=0.010, workdir=workdir)
        with services(backend):
            # PYTHONSAFEPATH: the servers run from this checkout's root, which
            # Python would otherwise put first on sys.path, ahead of PYTHONPATH
            # (the other build would run this checkout's code).
            builds = {
                "this checkout": {"PYTHONSAFEPATH": "1"},
                base: {"PYTHONSAFEPATH": "1", "PYTHONPATH": str(tree)},
            }
            for name, env in builds.items():
                _check_imports(name, env, tree if name == base else ROOT)

            def start(number: int, env: dict[str, str]) -> Service:
                home = workdir / f"server-{number}"
                home.mkdir()
                return start_server(
                    backend_url=backend.url,
                    database_url=f"sqlite+aiosqlite:///{(home / 'chatkit.db').as_posix()}",
                    workdir=home,
                    env=env,
                )

            # Both at once: a server takes seconds to import everything.
            with ThreadPoolExecutor(len(builds)) as starting:
                started = list(starting.map(start, range(len(builds)), builds.values()))
            servers = dict(zip(builds, started, strict=True))
            with services(*servers.values()):
                extra, cpu = run(_rounds(backend, servers, args.rounds))
    _report(extra, cpu, base)
    print(f"machine speed {machine_speed():.1f} ms at the end")
    return 0


if __name__ == "__main__":
    sys.exit(main())
