"""Benchmark plumbing: subprocesses, resource sampling, statistics and the report.

Private to ``bench/bench_streaming.py``. Everything binds or connects to
127.0.0.1 only, every wait is bounded, and every process started here is
registered so that it is terminated (then killed) however the run ends.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import math
import os
import resource
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import psutil

REPO_ROOT = Path(__file__).resolve().parent.parent
BENCH_DIR = Path(__file__).resolve().parent
HOST = "127.0.0.1"
# Migrations plus importing the Agents SDK take a few seconds; a cold disk
# or a large database (the list figures) can take longer.
STARTUP_TIMEOUT = 90.0
STOP_TIMEOUT = 10.0
SAMPLE_INTERVAL = 0.1

_running: list[subprocess.Popen[bytes]] = []


def raise_fd_limit(wanted: int = 65536) -> int:
    """Raise the soft RLIMIT_NOFILE (children inherit it); return the new value.

    500 concurrent streams need about 1500 descriptors across the client, the
    server (client socket plus backend socket per stream) and the backend.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if target > soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        return target
    return soft


def free_port() -> int:
    """A port on 127.0.0.1 that was free a moment ago (the child binds it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=STOP_TIMEOUT)
    with contextlib.suppress(ValueError):
        _running.remove(proc)


@atexit.register
def stop_all() -> None:
    """Last resort: stop whatever a failing figure left running."""
    for proc in list(_running):
        with contextlib.suppress(Exception):
            _stop(proc)


@dataclass
class Service:
    """One subprocess serving HTTP on 127.0.0.1."""

    name: str
    proc: subprocess.Popen[bytes]
    url: str
    log: Path

    @property
    def pid(self) -> int:
        return self.proc.pid

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def log_problems(self, limit: int = 6) -> list[str]:
        """Distinct WARNING/ERROR log messages (timestamps stripped), with counts.

        The temporary directory holding the log is removed after the run, so
        this is what is left to diagnose errors a figure counted.
        """
        try:
            lines = self.log.read_text(errors="replace").splitlines()
        except OSError:
            return []
        counts: dict[str, int] = {}
        for line in lines:
            # Log format: "HH:MM:SS LEVEL   logger: message".
            _, _, rest = line.partition(" ")
            if rest.startswith(("WARNING", "ERROR", "CRITICAL")):
                key = " ".join(rest.split())[:160]
                counts[key] = counts.get(key, 0) + 1
        ranked = sorted(counts.items(), key=lambda kv: -kv[1])
        return [f"{n}x {message}" for message, n in ranked[:limit]]

    def stop(self) -> None:
        _stop(self.proc)


def _spawn(name: str, argv: list[str], env: dict[str, str], log: Path, url: str) -> Service:
    with log.open("wb") as out:
        proc = subprocess.Popen(argv, cwd=REPO_ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
    _running.append(proc)
    return Service(name, proc, url, log)


def _wait_ready(service: Service, path: str) -> None:
    deadline = time.monotonic() + STARTUP_TIMEOUT
    with httpx.Client(timeout=2.0) as client:
        while time.monotonic() < deadline:
            if service.proc.poll() is not None:
                break
            with contextlib.suppress(httpx.HTTPError):
                if client.get(service.url + path).status_code == 200:
                    return
            time.sleep(0.05)
    service.stop()
    raise RuntimeError(f"{service.name} did not start:\n{service.log_tail()}")


def start_backend(*, tokens: int, delay: float, workdir: Path) -> Service:
    """Start ``fake_backend_server.py`` answering ``Reply.count(tokens, delay=delay)``."""
    port = free_port()
    argv = [
        sys.executable,
        str(BENCH_DIR / "fake_backend_server.py"),
        "--port",
        str(port),
        "--tokens",
        str(tokens),
        "--delay",
        str(delay),
    ]
    log = workdir / f"backend-{port}.log"
    service = _spawn("fake backend", argv, dict(os.environ), log, f"http://{HOST}:{port}")
    _wait_ready(service, "/v1/models")
    return service


def start_server(
    *,
    backend_url: str | None,
    database_url: str,
    workdir: Path,
    workers: int = 1,
    env: dict[str, str] | None = None,
) -> Service:
    """Start ``chatkit-server serve [--workers N]`` as users run it, on ``database_url``.

    ``env``: more ``CHATKIT_*`` settings (sign-in, say).
    """
    port = free_port()
    environment = {k: v for k, v in os.environ.items() if not k.startswith("CHATKIT_")}
    environment.update(
        CHATKIT_DATA_DIR=str(workdir / "data"),
        CHATKIT_DATABASE_URL=database_url,
        CHATKIT_LOG_LEVEL="warning",
    )
    if backend_url is not None:
        environment["CHATKIT_LLM_BASE_URL"] = backend_url + "/v1"
    environment.update(env or {})
    argv = [sys.executable, "-m", "chatkit_server.cli", "serve", "--port", str(port)]
    if workers > 1:
        argv += ["--workers", str(workers)]
    log = workdir / f"server-{port}.log"
    service = _spawn("chatkit server", argv, environment, log, f"http://{HOST}:{port}")
    _wait_ready(service, "/healthz")
    return service


@contextlib.contextmanager
def services(*started: Service) -> Iterator[None]:
    """Stop the given services on leaving, whatever happens."""
    try:
        yield
    finally:
        for service in reversed(started):
            service.stop()


def _tree(pid: int) -> list[psutil.Process]:
    # With --workers the server's work happens in its child processes. The
    # benchmark's own children are the services it measures separately.
    process = psutil.Process(pid)
    if pid == os.getpid():
        return [process]
    return [process, *process.children(recursive=True)]


def cpu_seconds(pid: int) -> float:
    """User plus system CPU seconds the process and its children have used so far."""
    total = 0.0
    for process in _tree(pid):
        with contextlib.suppress(psutil.Error):
            times = process.cpu_times()
            total += times.user + times.system
    return total


@dataclass
class Usage:
    """What the sampler saw: peak RSS of the watched process, CPU of each."""

    peak_rss: int = 0
    cpu: dict[str, float] = field(default_factory=dict)  # name -> CPU seconds
    wall: float = 0.0

    def cpu_percent(self, name: str) -> float:
        return 100.0 * self.cpu.get(name, 0.0) / self.wall if self.wall else 0.0


class Sampler:
    """Samples RSS of one process every 100 ms, from a thread.

    A thread rather than a task: the benchmark's event loop is busy driving
    hundreds of streams and would sample late exactly when memory peaks.
    CPU time of every named process is taken at start and stop.
    """

    def __init__(self, rss_pid: int, cpu_pids: dict[str, int]) -> None:
        self._proc = psutil.Process(rss_pid)
        self._cpu_pids = cpu_pids
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)
        self.usage = Usage()
        self._cpu0: dict[str, float] = {}
        self._t0 = 0.0

    def __enter__(self) -> Usage:
        self._cpu0 = {name: cpu_seconds(pid) for name, pid in self._cpu_pids.items()}
        self._t0 = time.perf_counter()
        self._thread.start()
        return self.usage

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5.0)
        self.usage.wall = time.perf_counter() - self._t0
        for name, pid in self._cpu_pids.items():
            with contextlib.suppress(psutil.Error):
                self.usage.cpu[name] = cpu_seconds(pid) - self._cpu0[name]

    def _run(self) -> None:
        while not self._stop.is_set():
            with contextlib.suppress(psutil.Error):
                rss = sum(process.memory_info().rss for process in _tree(self._proc.pid))
                self.usage.peak_rss = max(self.usage.peak_rss, rss)
            self._stop.wait(SAMPLE_INTERVAL)


def rss_mib(pid: int) -> float:
    """Resident memory of the process and its children, in MiB."""
    return sum(process.memory_info().rss for process in _tree(pid)) / 2**20


def percentile(values: Sequence[float], p: float) -> float:
    """Nearest-rank percentile (p in 0..100); NaN for no values."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = max(1, math.ceil(p / 100.0 * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


def machine_speed() -> float:
    """Milliseconds a fixed piece of pure-Python work takes here (best of five).

    The figures depend on how fast this machine runs Python at the moment,
    and a shared virtual machine's speed drifts: the same build has cost
    13 ms and 20 ms of server CPU per new thread an hour apart. Printed at
    the start and end of a run, so that figures are compared only between
    runs whose machine was about as fast.
    """
    best = math.inf
    for _ in range(5):
        started = time.perf_counter()
        # Dicts, strings and JSON: the kind of work a streaming server does.
        rows = [{"id": f"msg_{n}", "text": "token " * 20, "n": n} for n in range(2_000)]
        for _ in range(3):
            rows = json.loads(json.dumps(rows))
        sorted(rows, key=lambda row: row["id"])
        best = min(best, time.perf_counter() - started)
    return best * 1000


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.2f} ms"


@dataclass
class Row:
    figure: str
    metric: str
    value: str
    baseline: str
    ratio: str
    target: str
    status: str


class Report:
    """Prints one line per figure as it is measured, and a table at the end."""

    def __init__(self) -> None:
        self.rows: list[Row] = []

    def figure(
        self,
        figure: str,
        metric: str,
        *,
        value: str,
        baseline: str = "-",
        ratio: float | None = None,
        target: str = "-",
        passed: bool | None = None,
    ) -> None:
        """Record and print one figure; ``passed`` None means "no target"."""
        ratio_text = "-" if ratio is None or math.isnan(ratio) else f"{ratio:.3f}x"
        status = "info" if passed is None else ("PASS" if passed else "MISS")
        row = Row(figure, metric, value, baseline, ratio_text, target, status)
        self.rows.append(row)
        line = f"[{figure}] {metric}: {value}"
        if baseline != "-":
            line += f" | baseline {baseline}"
        if ratio_text != "-":
            line += f" | ratio {ratio_text}"
        if target != "-":
            line += f" | target {target}"
        print(f"{line} -> {status}", flush=True)

    def note(self, figure: str, text: str) -> None:
        print(f"[{figure}] {text}", flush=True)

    def skipped(self, figure: str, reason: str) -> None:
        self.rows.append(Row(figure, "(all)", "-", "-", "-", "-", "skipped"))
        print(f"[{figure}] skipped: {reason}", flush=True)

    def crashed(self, figure: str, error: str) -> None:
        self.rows.append(Row(figure, "(all)", "-", "-", "-", "-", "CRASH"))
        print(f"[{figure}] CRASH: {error}", flush=True)

    def table(self) -> str:
        header = Row("figure", "metric", "value", "baseline", "ratio", "target", "status")
        rows = [header, *self.rows]
        cols = list(zip(*(tuple(vars(r).values()) for r in rows), strict=True))
        widths = [max(len(str(cell)) for cell in col) for col in cols]
        lines = []
        for index, row in enumerate(rows):
            cells = tuple(vars(row).values())
            lines.append("  ".join(str(c).ljust(w) for c, w in zip(cells, widths, strict=True)))
            if index == 0:
                lines.append("  ".join("-" * w for w in widths))
        return "\n".join(lines)
