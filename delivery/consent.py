"""What a recipient's signed links (unsubscribe /u/<token>, preference centre /p/<token>) resolve to, and the
unsubscribe as the link makes it: compliance's service plus the engagement event that counts it in the campaign's
metrics, in one transaction.

This lives in delivery, not compliance, because of the dependency direction (STYLE.md §11): the tokens are signed
by campaigns.content.links and the message a link came from is a delivery row, and compliance never imports
either. Delivery sits above both, and it already writes analytics' engagement table with plain SQL when it
records sends (analytics reads delivery, so delivery cannot call analytics' services).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from django.core.exceptions import ValidationError
from django.db import connection, transaction
from django.utils import timezone

from audiences.models import Contact
from campaigns.content import links
from compliance import services as compliance
from compliance.models import Unsubscribe
from delivery.models import Message

ENGAGEMENT_SQL = """
INSERT INTO analytics_engagementevent (organisation_id, campaign_id, run_id, message_id, variant_id, contact_id,
                                       channel, kind, occurred_at, is_machine, value, dedupe_key)
SELECT r.organisation_id, r.campaign_id, m.run_id, m.id, m.variant_id, m.contact_id, m.channel, 'unsubscribe', %s,
       false, NULL, 'unsubscribe:' || m.id
FROM delivery_message m JOIN delivery_run r ON r.id = m.run_id
WHERE m.id = %s
ON CONFLICT (dedupe_key) DO NOTHING
"""


@dataclass
class Recipient:
    contact: Contact
    attribution: dict[str, Any] = field(default_factory=dict)


def _contact(organisation_id: str, contact_id: str) -> Contact | None:
    # "0" (and anything not a positive id) names nobody: test sends and seed copies carry it.
    if not contact_id.isdigit() or int(contact_id) <= 0:
        return None
    try:
        return (
            Contact.objects.select_related("organisation")
            .filter(pk=int(contact_id), organisation_id=organisation_id)
            .first()
        )
    except (ValueError, ValidationError):  # not a UUID: a token we never issued
        return None


def resolve_unsubscribe(token: str) -> Recipient | None:
    """The contact (and the message, when the token names one of theirs) of a valid unsubscribe token; None for
    a tampered, expired, foreign or contact-less token — callers show all of those the same way."""
    try:
        organisation_id, contact_id, message_id = links.read_unsubscribe(token)
    except (links.BadToken, ValueError):
        return None
    contact = _contact(organisation_id, contact_id)
    if contact is None:
        return None
    recipient = Recipient(contact)
    if message_id.isdigit():
        message = (
            Message.objects.select_related("run")
            .filter(pk=int(message_id), contact_id=contact.pk, run__organisation_id=contact.organisation_id)
            .first()
        )
        if message is not None:
            recipient.attribution = {
                "message_id": message.pk,
                "run_id": message.run_id,
                "campaign_id": message.run.campaign_id,
                "channel": message.channel,
            }
    return recipient


def resolve_preferences(token: str, *, now: float | None = None) -> Recipient | None:
    try:
        organisation_id, contact_id, issued = links.unsign("preferences", token, count=3)
        if (now or time.time()) - int(issued) > links.TOKEN_DAYS * 86400:
            return None
    except (links.BadToken, ValueError):
        return None
    contact = _contact(organisation_id, contact_id)
    return Recipient(contact) if contact is not None else None


def preferences_link(contact: Contact) -> str:
    return links.preferences_url(str(contact.organisation_id), str(contact.pk))


# Who the audit log says acted, per way a recipient's unsubscribe came in.
RECIPIENT_SOURCES = {
    Unsubscribe.Source.PAGE: "unsubscribe page",
    Unsubscribe.Source.ONE_CLICK: "one-click unsubscribe",
    Unsubscribe.Source.MAIL: "unsubscribe by mail (List-Unsubscribe mailto)",
}


def recipient_unsubscribe(
    *, recipient: Recipient, source: Unsubscribe.Source, reason: str = ""
) -> tuple[Unsubscribe | None, bool]:
    """Unsubscribe from the link (the page or RFC 8058 one-click) or by mail to the List-Unsubscribe mailto
    (delivery.inbound_mail), counted once per message in the campaign's metrics (dedupe key
    `unsubscribe:<message id>`), in one transaction."""
    actor = compliance.recipient_actor(recipient.contact.organisation, RECIPIENT_SOURCES[source])
    with transaction.atomic():
        record, changed = compliance.contact_unsubscribe(
            actor=actor,
            contact=recipient.contact,
            source=source,
            reason=reason,
            attribution=recipient.attribution,
        )
        message_id = recipient.attribution.get("message_id")
        if message_id is not None:
            with connection.cursor() as cursor:
                cursor.execute(ENGAGEMENT_SQL, [timezone.now(), message_id])
    return record, changed
