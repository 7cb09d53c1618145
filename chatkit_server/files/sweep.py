"""Deleting attachments nobody sent, and bytes no attachment names.

Run by the app's upkeep on start and every minute:

- an attachment never attached to a message (no thread) is deleted with its
  bytes once the grace period (``CHATKIT_UPLOAD_GRACE``) is over;
- bytes that name no attachment are deleted once they are
  :data:`ORPHAN_SECONDS` old: the leftovers of a thread deleted through the
  REST API or by another process, or of a crash between storing a direct
  upload's bytes and recording it (which takes moments; hence the wait).
"""

from __future__ import annotations

import functools
import logging
import time
from datetime import UTC, datetime
from typing import Final

from chatkit_server.files.storage import FileStorage
from chatkit_server.store.attachments import existing_attachment_ids, sweep_unattached
from chatkit_server.store.database import Database

__all__ = ["ORPHAN_SECONDS", "sweep_attachments"]

logger = logging.getLogger(__name__)

ORPHAN_SECONDS: Final = 600


async def sweep_attachments(
    database: Database, files: FileStorage, *, grace: float, now: float | None = None
) -> None:
    """Delete unsent attachments past ``grace`` seconds, and orphaned bytes.

    Raises:
        StoreError: The database failed (the next sweep tries again).
    """
    moment = time.time() if now is None else now
    cutoff = datetime.fromtimestamp(moment - grace, UTC)
    unsent = await sweep_unattached(database, older_than=cutoff)
    await files.delete(unsent)
    orphans = await files.sweep(
        functools.partial(existing_attachment_ids, database), older_than=moment - ORPHAN_SECONDS
    )
    if unsent or orphans:
        logger.info("swept %d unsent attachments and %d orphaned files", len(unsent), orphans)
