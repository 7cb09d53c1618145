"""Signed, expiring links to image previews and uploads, for the ChatKit iframe.

The iframe that shows a message's images is another origin and sends no
bearer header, and a two-phase upload URL is meant to work as a presigned
one (ChatKit sends the bytes with the descriptor's headers, no more), so
such a URL carries its own proof: an HMAC of what it does (``preview``,
``upload``), the attachment id, its owner and an expiry time, under a key
only the server knows. Whoever has the link may do that one thing to that
one attachment until it expires; a link made for another attachment or
action, or altered, opens nothing. Expiry times are rounded up to the hour,
so the links of one thread stay the same (and cached) for a while across
reloads, and links are made anew each time items are loaded.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import math
import time
from typing import Final
from urllib.parse import quote

__all__ = ["LINK_SECONDS", "LinkSigner"]

LINK_SECONDS: Final = 24 * 3600
"""How long a link works at least (a preview link is renewed whenever items load)."""

_ROUND_SECONDS: Final = 3600


class LinkSigner:
    """Makes and checks signed links.

    Args:
        key: The signing key (at least 32 bytes); every process serving the
            same database must use the same one.
        seconds: How long a link works at least.
    """

    def __init__(self, key: bytes, *, seconds: int = LINK_SECONDS) -> None:
        if len(key) < 32:
            raise ValueError("a link signing key needs at least 32 bytes")
        self._key = key
        self._seconds = seconds

    def _signature(self, action: str, attachment_id: str, user_id: str, expires: int) -> str:
        message = f"{action}\n{attachment_id}\n{user_id}\n{expires}".encode()
        digest = hmac.new(self._key, message, hashlib.sha256).digest()
        return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()

    def url(
        self,
        base_url: str,
        attachment_id: str,
        user_id: str,
        *,
        action: str = "preview",
        now: float | None = None,
    ) -> str:
        """The link to ``action`` (``preview``, ``upload``) ``user_id``'s attachment."""
        moment = time.time() if now is None else now
        expires = math.ceil((moment + self._seconds) / _ROUND_SECONDS) * _ROUND_SECONDS
        signature = self._signature(action, attachment_id, user_id, expires)
        return (
            f"{base_url.rstrip('/')}/chatkit/attachments/{quote(attachment_id, safe='')}/"
            f"{action}?expires={expires}&signature={signature}"
        )

    def verify(
        self,
        attachment_id: str,
        user_id: str,
        expires: str,
        signature: str,
        *,
        action: str = "preview",
        now: float | None = None,
    ) -> bool:
        """Whether ``expires`` and ``signature`` allow ``action`` on this attachment now."""
        if not expires.isdigit() or len(expires) > 12:
            return False
        if int(expires) < (time.time() if now is None else now):
            return False
        expected = self._signature(action, attachment_id, user_id, int(expires))
        return hmac.compare_digest(expected.encode(), signature.encode())
