"""Keyed hashes of addresses: what an erased contact's email or phone becomes on the suppression list.

The same keyed hash as every stored address's look-up hash (audiences.pii.pii_hash: HMAC-SHA256 over the
normalised address, emails lower-cased, phones E.164, stored as "h:<hex>"), so an erased address matches a contact
imported again with it — fan-out and the send-time claim compare `address_hash` with the contact's
`email_hash` / `phone_hash` in SQL — while the address itself is gone. "h:<hex>" can never be a real address.
"""

from __future__ import annotations

from audiences.pii import HASH_PREFIX, pii_hash

PREFIX = HASH_PREFIX


def address_hash(address: str) -> str:
    return pii_hash(address)
