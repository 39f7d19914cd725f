"""The in-app inbox for client apps: a contact's messages, unread count, mark read (which counts as an open)."""

from __future__ import annotations

from typing import Any

from django.db import transaction
from django.db.models import QuerySet
from django.utils import timezone

from analytics.models import EngagementEvent
from audiences.access import Actor, require_inbox_client
from audiences.models import Contact
from delivery.models import InboxMessage


def inbox_contact(actor: Actor, external_id: str) -> Contact:
    """The organisation's contact with this external id; Contact.DoesNotExist (404) otherwise."""
    return Contact.objects.get(organisation=actor.organisation, external_id=external_id)


def inbox_messages(actor: Actor, contact: Contact, *, unread_only: bool = False) -> QuerySet[InboxMessage]:
    messages = InboxMessage.objects.filter(organisation_id=actor.organisation.pk, contact_id=contact.pk)
    if unread_only:
        messages = messages.filter(read_at__isnull=True)
    return messages.order_by("-created_at", "-message_id")


def inbox_unread_count(actor: Actor, contact: Contact) -> int:
    return inbox_messages(actor, contact, unread_only=True).count()


@transaction.atomic
def inbox_mark_read(actor: Actor, contact: Contact, message_id: Any) -> InboxMessage:
    """Mark read (idempotent: the first read time stays) and record the open once."""
    require_inbox_client(actor)
    message = inbox_messages(actor, contact).select_for_update().get(message_id=message_id)
    if message.read_at is None:
        message.read_at = timezone.now()
        message.save(update_fields=["read_at"])
        EngagementEvent.objects.get_or_create(
            dedupe_key=f"inbox:{message.message_id}:open",
            defaults={
                "organisation_id": message.organisation_id,
                "campaign_id": message.campaign_id,
                "run_id": message.run_id,
                "message_id": message.message_id,
                "variant_id": message.variant_id,
                "contact_id": message.contact_id,
                "channel": "in_app",
                "kind": EngagementEvent.Kind.OPEN,
                "occurred_at": message.read_at,
            },
        )
    return message
