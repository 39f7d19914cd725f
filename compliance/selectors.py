"""Reads that need care: what the send paths pass to their consent checks."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from django.db.models import QuerySet

from compliance.hashing import pads
from compliance.models import Suppression, Unsubscribe


def has_erased_addresses(organisation_id: Any) -> bool:
    return Suppression.objects.filter(organisation_id=organisation_id, reason=Suppression.Reason.ERASED).exists()


def consent_params(organisation_id: Any, category: str) -> dict[str, Any]:
    """Parameters of the consent checks in fan-out and the send-time claim: the campaign's category, and whether
    (and with which pads) to compare recipients' addresses with erased contacts' hashed ones — only
    organisations that erased someone pay for hashing."""
    ipad, opad = pads()
    return {"category": category, "erased": has_erased_addresses(organisation_id), "ipad": ipad, "opad": opad}


def unsubscribes_for_campaign(organisation_id: Any, campaign_id: Any) -> QuerySet[Unsubscribe]:
    """Who unsubscribed from a campaign's messages, newest first (erased contacts show without a contact)."""
    return (
        Unsubscribe.objects.filter(organisation_id=organisation_id, campaign_id=campaign_id)
        .select_related("contact")
        .order_by("-created_at", "-id")
    )


UNSUBSCRIBE_CSV_HEADER = ("unsubscribed_at", "contact", "email", "phone", "channel", "source", "reason", "message_id")


def unsubscribe_csv_rows(queryset: QuerySet[Unsubscribe]) -> Iterator[tuple[Any, ...]]:
    for u in queryset.iterator(chunk_size=2000):
        contact = u.contact
        yield (
            u.created_at.isoformat(),
            contact.external_id if contact else "(erased)",
            contact.email if contact else "",
            contact.phone if contact else "",
            u.channel,
            u.source,
            u.reason,
            u.message_id or "",
        )
