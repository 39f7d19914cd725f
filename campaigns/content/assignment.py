"""Deterministic variant assignment.

bucket = the second 32 bits (hex digits 9-16) of md5("<campaign id>:<contact id>") as an unsigned integer,
modulo 10,000. Variants own consecutive bucket ranges in their order, each as wide as its allocation percent
times 100. The same contact in the same campaign always lands in the same variant, in every run and process. The
holdout draw uses the first 32 bits of the same digest (audiences.segments), so one MD5 per contact serves both
and the two draws are independent.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any

BUCKETS = 10_000


def variant_bucket(seed: str, contact_id: int) -> int:
    digest = hashlib.md5(f"{seed}:{contact_id}".encode()).hexdigest()  # noqa: S324 - not for security
    return int(digest[8:16], 16) % BUCKETS


def assign_variant(seed: str, contact_id: int, allocations: Sequence[tuple[Any, float]]) -> Any:
    """The variant key whose bucket range holds this contact. `allocations` are (key, percent) in order."""
    bucket = variant_bucket(seed, contact_id)
    upper = 0
    for key, percent in allocations:
        upper += round(percent * 100)
        if bucket < upper:
            return key
    return allocations[-1][0]
