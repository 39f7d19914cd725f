"""Reads that need care: what the send paths pass to their consent checks."""

from __future__ import annotations

from typing import Any

from compliance.hashing import pads
from compliance.models import Suppression


def has_erased_addresses(organisation_id: Any) -> bool:
    return Suppression.objects.filter(organisation_id=organisation_id, reason=Suppression.Reason.ERASED).exists()


def consent_params(organisation_id: Any, category: str) -> dict[str, Any]:
    """Parameters of the consent checks in fan-out and the send-time claim: the campaign's category, and whether
    (and with which pads) to compare recipients' addresses with erased contacts' hashed ones — only
    organisations that erased someone pay for hashing."""
    ipad, opad = pads()
    return {"category": category, "erased": has_erased_addresses(organisation_id), "ipad": ipad, "opad": opad}
