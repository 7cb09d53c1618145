"""Signed preview links: they open one attachment, for a while, for its owner's link."""

from __future__ import annotations

from urllib.parse import parse_qs, urlsplit

import pytest

from chatkit_server.files import LINK_SECONDS, LinkSigner

KEY = b"k" * 32


def query(url: str) -> tuple[str, str]:
    values = parse_qs(urlsplit(url).query)
    return values["expires"][0], values["signature"][0]


def test_a_link_opens_its_attachment_for_its_owner_until_it_expires() -> None:
    signer = LinkSigner(KEY)
    url = signer.url("http://h:1/", "atc_1", "alice", now=1000.0)
    assert url.startswith("http://h:1/chatkit/attachments/atc_1/preview?expires=")
    expires, signature = query(url)
    assert int(expires) >= 1000 + LINK_SECONDS

    assert signer.verify("atc_1", "alice", expires, signature, now=1000.0)
    assert not signer.verify("atc_2", "alice", expires, signature, now=1000.0)
    assert not signer.verify("atc_1", "bob", expires, signature, now=1000.0)
    assert not signer.verify("atc_1", "alice", str(int(expires) + 1), signature, now=1000.0)
    assert not signer.verify("atc_1", "alice", expires, signature[:-1] + "A", now=1000.0)
    assert not signer.verify("atc_1", "alice", expires, signature, now=int(expires) + 1)
    assert not LinkSigner(b"o" * 32).verify("atc_1", "alice", expires, signature, now=1000.0)


@pytest.mark.parametrize("expires", ["", "-5", "1e9", "9" * 40])
def test_malformed_expiry_opens_nothing(expires: str) -> None:
    assert not LinkSigner(KEY).verify("atc_1", "alice", expires, "sig", now=0)


def test_links_of_the_same_hour_are_the_same() -> None:
    # Reloading a thread does not change its image URLs: the browser's cache holds.
    signer = LinkSigner(KEY)
    assert signer.url("h", "atc_1", "a", now=7201.0) == signer.url("h", "atc_1", "a", now=7999.0)


def test_a_short_key_is_refused() -> None:
    with pytest.raises(ValueError, match="32 bytes"):
        LinkSigner(b"short")
