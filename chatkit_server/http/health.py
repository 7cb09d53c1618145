"""``GET /healthz``: 200 when the server can answer, 503 when its database cannot.

"Can answer" means can write, too: a server whose every write fails (a full
disk) would still answer reads, and each user would get a stream that ends
in an error. So the check also fails while the disk under the server's data
(the SQLite file, attachment bytes in a local directory) has less free space
than ``CHATKIT_MIN_FREE_BYTES``, or while the database recently refused a
write for lack of space; both clear by themselves once space is freed.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import anyio
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from chatkit_server.files import LocalFileStorage
from chatkit_server.http.state import AppState, get_state

__all__ = ["HEALTH_TIMEOUT_SECONDS", "healthz", "low_disks"]

logger = logging.getLogger(__name__)

HEALTH_TIMEOUT_SECONDS = 2.0


async def healthz(request: Request) -> Response:
    """Report readiness: the database answers in time and can take writes."""
    state = get_state(request)
    try:
        with anyio.fail_after(HEALTH_TIMEOUT_SECONDS):
            await state.database.ping()
    except Exception:
        logger.warning("health check: database did not answer", exc_info=True)
        return JSONResponse({"status": "unavailable", "database": "down"}, status_code=503)
    low = low_disks(state)
    if low or state.database.disk_full:
        logger.warning(
            "health check: the disk is full or nearly so (%s)",
            ", ".join(str(path) for path in low) or "a write failed for lack of space",
        )
        return JSONResponse({"status": "unavailable", "database": "disk full"}, status_code=503)
    return JSONResponse({"status": "ok"})


def low_disks(state: AppState) -> list[Path]:
    """The directories the server writes to whose disk has less free space than the floor."""
    floor = state.settings.min_free_bytes
    if floor <= 0:
        return []
    directories: list[Path] = []
    sqlite_path = state.database.sqlite_path
    if sqlite_path is not None:
        directories.append(sqlite_path.parent)
    if isinstance(state.files, LocalFileStorage):
        directories.append(state.files.root)
    low = []
    for directory in directories:
        existing = _nearest_existing(directory)
        # statvfs: one system call, no disk I/O worth leaving the loop for.
        if existing is not None and shutil.disk_usage(existing).free < floor:
            low.append(directory)
    return low


def _nearest_existing(path: Path) -> Path | None:
    """``path`` or its closest existing parent (the directory may not be made yet)."""
    for candidate in (path, *path.parents):
        if candidate.exists():
            return candidate
    return None
