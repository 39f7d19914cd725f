"""GDPR for one contact: export everything held about them, or erase them.

Here in delivery because both reach across every app that holds contact data — audiences (profile, events,
segment lists), compliance (preferences, unsubscribes, suppressions, audit), delivery (messages, in-app inbox) and
analytics' engagement table — and compliance never imports delivery (STYLE.md §11). Analytics' table is read and
anonymised with plain SQL, as sending writes it.

Erasure keeps the organisation's numbers: message rows, engagement events and counters stay, re-pointed at a
random surrogate id that no contact has (negative, so it can never collide with a real one) and with the
personal parts dropped (rendered in-app content, error texts that may quote an address, event properties). The
contact row, its preferences and list memberships go. Its email and phone stay on the suppression list only as
keyed hashes (audiences.pii), which fan-out and the send-time claim check, so a later import of the same
address is not sent to.
"""

from __future__ import annotations

import secrets
from typing import Any

from django.core.exceptions import PermissionDenied
from django.db import connection, transaction
from django.utils import timezone

from audiences.access import Actor
from audiences.adapters import contact_profile
from audiences.models import Contact, Event, Role, SegmentMember
from audiences.pii import pii_hash
from compliance import outbox
from compliance import services as compliance
from compliance.audit import audit_record
from compliance.models import AuditLogEntry, ContactChannelActivity, RunExclusion, Suppression, Unsubscribe

GDPR_ROLES = frozenset({Role.ADMIN, Role.COMPLIANCE})
EXPORT_ROW_LIMIT = 100_000


def _require(actor: Actor) -> None:
    if actor.role not in GDPR_ROLES:
        raise PermissionDenied("Only admins and compliance officers can export or erase a contact.")


def _rows(sql: str, params: list[Any]) -> list[dict[str, Any]]:
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        names = [c.name for c in cursor.description]
        return [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]


def _addresses(contact: Contact) -> list[str]:
    return [a for a in (contact.email.strip().lower(), contact.phone.strip()) if a]


@transaction.atomic
def contact_export(*, actor: Actor, contact_id: Any) -> dict[str, Any]:
    """Everything held about the contact, as JSON-ready data. The export itself is audited."""
    _require(actor)
    contact = compliance.contact_get(actor, contact_id)
    org = str(actor.organisation.pk)
    data = {
        "exported_at": timezone.now().isoformat(),
        "organisation": {"id": org, "name": actor.organisation.name},
        "contact": {"id": contact.pk, **contact_profile(contact), "updated_at": contact.updated_at.isoformat()},
        "preferences": compliance.preference_state(compliance.preference_for(contact)),
        "unsubscribes": [
            {
                "at": u.created_at.isoformat(),
                "source": u.source,
                "reason": u.reason,
                "campaign_id": str(u.campaign_id) if u.campaign_id else None,
                "message_id": u.message_id,
                "channel": u.channel,
            }
            for u in Unsubscribe.objects.filter(contact=contact).order_by("created_at")
        ],
        "suppressions": [
            {"address": s.address, "reason": s.reason, "note": s.note, "since": s.created_at.isoformat()}
            for s in Suppression.objects.filter(
                organisation=actor.organisation, address_hash__in=[pii_hash(a) for a in _addresses(contact)]
            )
        ],
        "segments": [
            str(segment_id)
            for segment_id in SegmentMember.objects.filter(contact=contact).values_list("segment_id", flat=True)
        ],
        "messages": _rows(
            "SELECT m.id, m.run_id, r.campaign_id, c.name AS campaign, m.channel, m.variant_id, m.status, m.error,"
            " m.parts, m.created_at, m.sent_at FROM delivery_message m JOIN delivery_run r ON r.id = m.run_id"
            " JOIN campaigns_campaign c ON c.id = r.campaign_id"
            " WHERE m.run_id IN (SELECT id FROM delivery_run WHERE organisation_id = %s) AND m.contact_id = %s"
            " ORDER BY m.id LIMIT %s",
            [org, contact.pk, EXPORT_ROW_LIMIT],
        ),
        "engagement": _rows(
            "SELECT message_id, campaign_id, channel, kind, occurred_at, is_machine, url, value"
            " FROM analytics_engagementevent"
            " WHERE run_id IN (SELECT id FROM delivery_run WHERE organisation_id = %s) AND contact_id = %s"
            " ORDER BY occurred_at, id LIMIT %s",
            [org, contact.pk, EXPORT_ROW_LIMIT],
        ),
        "inbox": _rows(
            "SELECT message_id, campaign_id, title, body, action_url, created_at, read_at FROM delivery_inboxmessage"
            " WHERE organisation_id = %s AND contact_id = %s ORDER BY created_at LIMIT %s",
            [org, contact.pk, EXPORT_ROW_LIMIT],
        ),
        "events": list(
            Event.objects.filter(organisation=actor.organisation, contact_id=contact.pk)
            .order_by("occurred_at")
            .values("event_id", "type", "properties", "occurred_at", "received_at")[:EXPORT_ROW_LIMIT]
        ),
        "exclusions": [
            {
                "run_id": str(x.run_id),
                "campaign_id": str(x.campaign_id),
                "channel": x.channel,
                "reason": x.reason,
                "at": x.created_at.isoformat(),
            }
            for x in RunExclusion.objects.filter(organisation=actor.organisation, contact_id=contact.pk).order_by(
                "created_at", "id"
            )[:EXPORT_ROW_LIMIT]
        ],
        "inbound": [
            {"channel": a.channel, "last_inbound_at": a.last_inbound_at.isoformat()}
            for a in ContactChannelActivity.objects.filter(contact=contact)
        ],
        "audit": [
            {"at": e.occurred_at.isoformat(), "action": e.action, "actor": e.actor_label, "details": e.details}
            for e in AuditLogEntry.objects.filter(
                organisation=actor.organisation, target_type="audiences.contact", target_id=str(contact.pk)
            ).order_by("occurred_at", "id")
        ],
    }
    audit_record(actor=actor, action="contact.export", target=contact, details={"messages": len(data["messages"])})
    return data


@transaction.atomic
def contact_erase(*, actor: Actor, contact_id: Any) -> dict[str, int]:
    """Erase the contact (see the module docstring). Returns how many rows of each kind were anonymised."""
    _require(actor)
    contact = Contact.objects.select_for_update().get(organisation=actor.organisation, pk=contact_id)
    org = str(actor.organisation.pk)
    addresses = _addresses(contact)
    # A random surrogate: the anonymised rows stay countable together but link to nobody, not even by arithmetic.
    surrogate = -(secrets.randbelow(2**62) + 1)
    counts: dict[str, int] = {}
    with connection.cursor() as cursor:
        for address in addresses:
            # The address stays suppressed by hash alone: an existing entry for it becomes the erased entry (its
            # encrypted address goes), or a new one is added.
            cursor.execute(
                "INSERT INTO compliance_suppression (organisation_id, address, address_hash, reason, note, created_at)"
                " VALUES (%s, %s, %s, 'erased', '', now()) ON CONFLICT (organisation_id, address_hash)"
                " DO UPDATE SET address = EXCLUDED.address, reason = 'erased', note = ''",
                [org, pii_hash(address), pii_hash(address)],
            )
        # Their audit entries stop quoting the addresses.
        cursor.execute(
            "UPDATE compliance_auditlogentry SET target_repr = 'erased address', details = details - 'address'"
            " WHERE organisation_id = %s AND target_type = 'compliance.suppression'"
            " AND split_part(target_repr, ' ', 1) = ANY(%s)",
            [org, addresses],
        )
        statements = {
            "messages": (
                "UPDATE delivery_message SET contact_id = %s, error = ''"
                " WHERE run_id IN (SELECT id FROM delivery_run WHERE organisation_id = %s) AND contact_id = %s",
                [surrogate, org, contact.pk],
            ),
            "engagement_events": (
                "UPDATE analytics_engagementevent SET contact_id = %s"
                " WHERE run_id IN (SELECT id FROM delivery_run WHERE organisation_id = %s) AND contact_id = %s",
                [surrogate, org, contact.pk],
            ),
            "inbox_messages": (
                "UPDATE delivery_inboxmessage SET contact_id = %s, title = '', body = '', action_url = '',"
                " icon_url = '' WHERE organisation_id = %s AND contact_id = %s",
                [surrogate, org, contact.pk],
            ),
            "events": (
                "UPDATE audiences_event SET contact_id = %s, properties = '{}'"
                " WHERE organisation_id = %s AND contact_id = %s",
                [surrogate, org, contact.pk],
            ),
            "run_exclusions": (
                "UPDATE compliance_runexclusion SET contact_id = NULL WHERE organisation_id = %s AND contact_id = %s",
                [org, contact.pk],
            ),
            "send_counts": (
                "DELETE FROM delivery_contactsendcount WHERE organisation_id = %s AND contact_id = %s",
                [org, contact.pk],
            ),
            "audit_entries": (
                "UPDATE compliance_auditlogentry SET target_repr = 'erased contact'"
                " WHERE organisation_id = %s AND target_type = 'audiences.contact' AND target_id = %s",
                [org, str(contact.pk)],
            ),
        }
        for name, (sql, params) in statements.items():
            cursor.execute(sql, params)
            counts[name] = cursor.rowcount
    outbox.enqueue(contact=contact, kind="erase", state={"erased": True})
    erased_id = contact.pk
    # Preferences and static list memberships cascade; unsubscribe records keep their counts without a contact.
    # Not audiences' contact_delete: that also deletes the contact's messages, and the counts must stay.
    Contact.objects.filter(pk=erased_id).delete()
    contact.pk = erased_id
    contact.external_id = "erased contact"
    audit_record(actor=actor, action="contact.erase", target=contact, details={**counts, "addresses": len(addresses)})
    return counts
