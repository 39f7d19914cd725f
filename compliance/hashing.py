"""Keyed hashes of addresses: what an erased contact's email or phone becomes on the suppression list.

HMAC-SHA256 with a key derived from SECRET_KEY (its own purpose, so it is no other signature's key), over the
normalised address (emails lower-cased, phones E.164). The stored form is "h:<hex>", which can never equal a
real address, so the ordinary suppression checks ignore it; fan-out and the send-time claim compare it with
`cs_address_hash` (compliance migration 0003), which computes the same HMAC in SQL from the key's inner and outer
pads passed as parameters — the key itself is never stored in the database.
"""

from __future__ import annotations

import hashlib
import hmac
from functools import lru_cache

from django.conf import settings

PREFIX = "h:"


@lru_cache(maxsize=4)
def _key(secret: str) -> bytes:
    return hmac.new(secret.encode(), b"campaign-service.compliance.erased-address", hashlib.sha256).digest()


def address_key() -> bytes:
    return _key(settings.SECRET_KEY)


def address_hash(address: str) -> str:
    return PREFIX + hmac.new(address_key(), address.encode(), hashlib.sha256).hexdigest()


def pads() -> tuple[bytes, bytes]:
    """The HMAC key's inner and outer pads (RFC 2104), for cs_address_hash."""
    key = address_key().ljust(64, b"\0")
    return bytes(b ^ 0x36 for b in key), bytes(b ^ 0x5C for b in key)
