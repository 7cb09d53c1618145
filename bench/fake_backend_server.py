"""Serve the loopback fake LLM backend in its own process, for the benchmarks.

Usage::

    python bench/fake_backend_server.py --port 8123 --tokens 200 --delay 0.01

Every ``POST /v1/chat/completions`` (or ``/v1/responses``) answers
``Reply.count(tokens, delay=delay)``: ``tokens`` content chunks ``"tok0 "``,
``"tok1 "`` ..., at a steady ``delay`` seconds apart: each is due ``delay``
after the previous one was due, so a busy machine delays a chunk without
pushing the rest of the answer back (the ideal the concurrent figures compare
with, tokens x delay, is then what the backend really takes).
``GET /bench/seen?text=...`` answers ``{"requests": n}``: how many of the
recorded requests hold that text in their JSON body (what a benchmark asks
to know the model was really given, say, an attachment's text).
``GET /bench/streams?since=t`` answers ``{"streams": [...]}``: each streamed
answer begun at ``time.monotonic()`` ``t`` or later, with when it began and
ended (``time.monotonic()``, the clock every process here shares) and how
many tokens it sent: where a burst's time went, seen from the backend.

The backend runs in a separate process so that its CPU time is not charged to
the chatkit server (or to the benchmark client) and the server reaches it over
a real loopback socket, exactly as it would reach llama-server or vLLM.
uvloop and httptools are used, as uvicorn picks them for the chatkit server
too. Only 127.0.0.1 is ever bound.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import uvicorn
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.types import Receive, Scope, Send

# Run as a script, so the repository root (for chatkit_server) may not be on
# sys.path when the package is not installed; it is installed editable here,
# but a plain checkout should work too.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from chatkit_server.testing.fake_backend import FakeBackend, Reply  # noqa: E402

# FakeBackend keeps every request and stream record for assertions; a
# benchmark sends tens of thousands of requests, so keep only the newest.
MAX_RECORDS = 2000


class BoundedRecords:
    """ASGI wrapper that trims the fake's request and stream logs."""

    def __init__(self, backend: FakeBackend) -> None:
        self.backend = backend

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        backend = self.backend
        if scope["type"] == "http" and scope["path"] == "/bench/seen":
            text = Request(scope).query_params.get("text", "")
            seen = sum(text in json.dumps(request.body) for request in backend.requests)
            await JSONResponse({"requests": seen})(scope, receive, send)
            return
        if scope["type"] == "http" and scope["path"] == "/bench/streams":
            since = float(Request(scope).query_params.get("since", "0"))
            streams = [
                {"started_at": r.started_at, "ended_at": r.ended_at, "tokens": r.tokens_sent}
                for r in backend.streams
                if r.stream and r.started_at >= since
            ]
            await JSONResponse({"streams": streams})(scope, receive, send)
            return
        if len(backend.requests) > MAX_RECORDS:
            # Running responders hold their own StreamRecord: trimming the
            # lists never disturbs a stream in flight.
            del backend.requests[: -MAX_RECORDS // 2]
            del backend.streams[: -MAX_RECORDS // 2]
        await backend.app(scope, receive, send)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True, help="port on 127.0.0.1")
    parser.add_argument("--tokens", type=int, default=200, help="content chunks per reply")
    parser.add_argument("--delay", type=float, default=0.0, help="seconds before each chunk")
    args = parser.parse_args(argv)

    backend = FakeBackend(default=Reply.count(args.tokens, delay=args.delay))
    config = uvicorn.Config(
        BoundedRecords(backend),
        host="127.0.0.1",
        port=args.port,
        log_level="warning",
        access_log=False,
        loop="uvloop",
        http="httptools",
        lifespan="off",
        # 500 concurrent streams arrive at once; the default backlog (2048) is
        # enough, but say so explicitly.
        backlog=4096,
    )
    uvicorn.Server(config).run()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
