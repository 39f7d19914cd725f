"""Consent and suppression actions: unsubscribes, preference changes, suppressions.

Each is one transaction that also writes its audit entry (with where the change came from: the recipient's link,
the API, the console) and, when an account_service is configured, its outbox row. Nothing here is pushed into the
delivery engine: fan-out and the send-time claim read ContactPreference and Suppression, so a change committed
here stops every queued message from the next claim on.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Mapping
from typing import Any

from django.core.exceptions import PermissionDenied, ValidationError
from django.core.validators import validate_email
from django.db import connection, transaction
from django.utils import timezone

from audiences.access import Actor, require_provider_post, system_actor
from audiences.contacts import normalise_phone
from audiences.models import Contact, Organisation, Role
from audiences.pii import encrypt, pii_hash
from compliance import outbox
from compliance.audit import audit_record
from compliance.models import ContactPreference, SendingHold, Suppression, Unsubscribe

# The channels and categories campaigns use (campaigns.models.Channel and Campaign.category; compliance does not
# import campaigns — tests check the lists agree).
CHANNELS = ("email", "sms", "whatsapp", "in_app", "webhook")
CATEGORIES = ("marketing", "transactional")

# Who may change a contact's consent or the suppression list on the organisation's behalf.
CONSENT_WRITERS = frozenset({Role.ADMIN, Role.MARKETER, Role.COMPLIANCE})

PREFERENCE_FIELDS = (
    "global_opt_out",
    "unsubscribed",
    "disabled_channels",
    "disabled_categories",
    "quiet_hours_start",
    "quiet_hours_end",
)


def require_consent_write(actor: Actor) -> None:
    if actor.role not in CONSENT_WRITERS:
        raise PermissionDenied(f"The {actor.role} role cannot change consent or suppressions.")


def recipient_actor(organisation: Organisation, how: str) -> Actor:
    """The recipient acting on their own consent through a signed link (no user, no key)."""
    return system_actor(organisation, f"recipient ({how})")


def contact_get(actor: Actor, contact_id: object) -> Contact:
    """The organisation's contact, or DoesNotExist (another organisation's contact is simply not found)."""
    return Contact.objects.get(organisation=actor.organisation, pk=contact_id)


def preference_for(contact: Contact) -> ContactPreference:
    """The contact's preferences; an unsaved default row when they never said anything."""
    found = ContactPreference.objects.filter(contact_id=contact.pk).first()
    return found or ContactPreference(contact=contact, organisation_id=contact.organisation_id)


def preference_state(preference: ContactPreference) -> dict[str, Any]:
    return {
        "global_opt_out": preference.global_opt_out,
        "unsubscribed": preference.unsubscribed_at is not None,
        "unsubscribed_at": preference.unsubscribed_at.isoformat() if preference.unsubscribed_at else None,
        "disabled_channels": sorted(preference.disabled_channels),
        "disabled_categories": sorted(preference.disabled_categories),
        "quiet_hours_start": preference.quiet_hours_start.isoformat() if preference.quiet_hours_start else None,
        "quiet_hours_end": preference.quiet_hours_end.isoformat() if preference.quiet_hours_end else None,
    }


def _locked_preference(contact: Contact) -> ContactPreference:
    # ON CONFLICT: two first changes for the same contact at once (a one-click POST and the page) both succeed.
    with connection.cursor() as cursor:
        cursor.execute(
            "INSERT INTO compliance_contactpreference (contact_id, organisation_id, global_opt_out, disabled_channels,"
            " disabled_categories, updated_at) VALUES (%s, %s, false, '{}', '{}', now())"
            " ON CONFLICT (contact_id) DO NOTHING",
            [contact.pk, str(contact.organisation_id)],
        )
    return ContactPreference.objects.select_for_update().get(contact_id=contact.pk)


def _clean_changes(changes: Mapping[str, Any], current: ContactPreference) -> dict[str, Any]:
    errors: dict[str, list[str]] = {}
    clean: dict[str, Any] = {}
    unknown = sorted(set(changes) - set(PREFERENCE_FIELDS))
    if unknown:
        errors["non_field_errors"] = [f"Unknown fields: {', '.join(unknown)}."]
    for name in ("global_opt_out", "unsubscribed"):
        if name in changes:
            if not isinstance(changes[name], bool):
                errors[name] = ["Must be true or false."]
            else:
                clean[name] = changes[name]
    for name, allowed in (("disabled_channels", CHANNELS), ("disabled_categories", CATEGORIES)):
        if name in changes:
            value = changes[name]
            if not isinstance(value, list | tuple) or not all(isinstance(v, str) for v in value):
                errors[name] = ["A list of names."]
            elif bad := sorted(set(value) - set(allowed)):
                errors[name] = [f"Unknown: {', '.join(bad)}. Choose from {', '.join(allowed)}."]
            else:
                clean[name] = sorted(set(value))
    for name in ("quiet_hours_start", "quiet_hours_end"):
        if name in changes:
            value = changes[name]
            if value is None or value == "":
                clean[name] = None
            elif isinstance(value, dt.time):
                clean[name] = value
            else:
                try:
                    clean[name] = dt.time.fromisoformat(str(value))
                except ValueError:
                    errors[name] = ["A time like 21:30, or empty."]
    if "quiet_hours_start" not in errors and "quiet_hours_end" not in errors:
        start = clean.get("quiet_hours_start", current.quiet_hours_start)
        end = clean.get("quiet_hours_end", current.quiet_hours_end)
        if (start is None) != (end is None):
            errors["quiet_hours_end" if end is None else "quiet_hours_start"] = [
                "Quiet hours need both a start and an end."
            ]
        elif start is not None and start == end:
            errors["quiet_hours_end"] = ["Quiet hours must end at a different time than they start."]
    if errors:
        raise ValidationError(errors)
    return clean


@transaction.atomic
def preference_update(
    *, actor: Actor, contact: Contact, changes: Mapping[str, Any], source: str
) -> tuple[ContactPreference, dict[str, list[Any]]]:
    """Change some of a contact's preferences. `source` says where the change came from (recipient page, api,
    console). Returns the preferences and what changed ({field: [before, after]}; empty: nothing did)."""
    if actor.organisation.pk != contact.organisation_id:
        raise Contact.DoesNotExist
    if not actor.system:
        require_consent_write(actor)
    preference = _locked_preference(contact)
    clean = _clean_changes(changes, preference)
    before = preference_state(preference)
    if "unsubscribed" in clean:
        if clean.pop("unsubscribed"):
            preference.unsubscribed_at = preference.unsubscribed_at or timezone.now()
        else:
            preference.unsubscribed_at = None
    for name, value in clean.items():
        setattr(preference, name, value)
    after = preference_state(preference)
    diff = {
        name: [before[name], after[name]]
        for name in before
        if before[name] != after[name] and name != "unsubscribed_at"
    }
    if diff:
        actor.stamp(preference, reason=f"preferences ({source})")
        preference.save()
        audit_record(
            actor=actor,
            action="contact.preferences",
            target=contact,
            details={"source": source, "changes": diff},
        )
        outbox.enqueue(contact=contact, kind="preferences", state=after)
    return preference, diff


@transaction.atomic
def contact_unsubscribe(
    *,
    actor: Actor,
    contact: Contact,
    source: str,
    reason: str = "",
    attribution: Mapping[str, Any] | None = None,
) -> tuple[Unsubscribe | None, bool]:
    """Unsubscribe the contact from every marketing campaign, at once. `attribution` names the message the link
    came from (message_id, run_id, campaign_id, channel) when there is one. Idempotent: a replayed link, or the
    page after a one-click POST, records one unsubscribe per message (a reason given later is added to it).

    Returns the unsubscribe record (None when nothing was recorded) and whether anything changed."""
    if actor.organisation.pk != contact.organisation_id:
        raise Contact.DoesNotExist
    if not actor.system:
        require_consent_write(actor)
    attribution = attribution or {}
    reason = (reason or "").strip()[:500]
    message_id = attribution.get("message_id")
    preference = _locked_preference(contact)
    existing = None
    if message_id is not None:
        existing = Unsubscribe.objects.filter(contact=contact, message_id=message_id).first()
    elif preference.unsubscribed_at is not None:
        existing = Unsubscribe.objects.filter(contact=contact).order_by("-created_at").first()
    if existing is not None and preference.unsubscribed_at is not None:
        if reason and not existing.reason:
            existing.reason = reason
            existing.save(update_fields=["reason"])
            audit_record(
                actor=actor,
                action="contact.unsubscribe_reason",
                target=contact,
                details={"source": source, "reason": reason, "unsubscribe": existing.pk},
            )
            return existing, True
        return existing, False
    was_unsubscribed = preference.unsubscribed_at is not None
    if not was_unsubscribed:
        preference.unsubscribed_at = timezone.now()
        actor.stamp(preference, reason=f"unsubscribe ({source})")
        preference.save()
    if existing is not None and message_id is not None:
        # Resubscribed since, and unsubscribing from the same message again: one record per message, so reuse it.
        record = existing
        if reason:
            record.reason = reason
            record.save(update_fields=["reason"])
    else:
        record = Unsubscribe.objects.create(
            organisation_id=contact.organisation_id,
            contact=contact,
            campaign_id=attribution.get("campaign_id"),
            run_id=attribution.get("run_id"),
            message_id=message_id,
            channel=attribution.get("channel") or "",
            source=source,
            reason=reason,
        )
    audit_record(
        actor=actor,
        action="contact.unsubscribe",
        target=contact,
        details={
            "source": source,
            "reason": reason,
            "already_unsubscribed": was_unsubscribed,
            **{k: str(v) for k, v in attribution.items() if v is not None},
        },
    )
    if not was_unsubscribed:
        outbox.enqueue(contact=contact, kind="unsubscribe", state=preference_state(preference))
    return record, True


# --- suppression list ------------------------------------------------------------------------------------------------


def normalise_address(raw: str) -> str:
    """Emails lower-cased, phones in E.164; anything else is a ValidationError."""
    value = (raw or "").strip()
    if not value:
        raise ValidationError("An email address or an E.164 phone number.")
    if "@" in value:
        validate_email(value)
        return value.lower()
    return normalise_phone(value)


@transaction.atomic
def suppression_add(
    *, actor: Actor, address: str, note: str = "", reason: str = Suppression.Reason.MANUAL
) -> Suppression:
    require_consent_write(actor)
    try:
        normalised = normalise_address(address)
    except ValidationError as exc:
        raise ValidationError({"address": exc.messages}) from exc
    suppression, created = Suppression.objects.get_or_create(
        organisation=actor.organisation,
        address_hash=pii_hash(normalised),
        defaults={"address": normalised, "reason": reason, "note": (note or "")[:500]},
    )
    if created:
        audit_record(
            actor=actor, action="suppression.add", target=suppression, details={"reason": reason, "note": note[:500]}
        )
    return suppression


@transaction.atomic
def suppression_remove(*, actor: Actor, suppression: Suppression) -> None:
    require_consent_write(actor)
    if suppression.organisation_id != actor.organisation.pk:
        raise Suppression.DoesNotExist
    audit_record(
        actor=actor,
        action="suppression.remove",
        target=suppression,
        details={"address": suppression.address, "reason": suppression.reason},
    )
    suppression.delete()


def suppressions_import(*, actor: Actor, addresses: Iterable[str], note: str = "") -> dict[str, Any]:
    """Add many addresses at once (one INSERT … ON CONFLICT); bad ones are reported by line (1-based)."""
    require_consent_write(actor)
    good: list[str] = []
    rejected: list[dict[str, Any]] = []
    for line, raw in enumerate(addresses, start=1):
        if not (raw or "").strip():
            continue
        try:
            good.append(normalise_address(raw))
        except ValidationError as exc:
            rejected.append({"line": line, "address": str(raw)[:254], "errors": exc.messages})
    unique = sorted(set(good))
    with transaction.atomic(), connection.cursor() as cursor:
        added = 0
        if unique:
            cursor.execute(
                "INSERT INTO compliance_suppression (organisation_id, address, address_hash, reason, note, created_at)"
                " SELECT %s, a, h, 'import', %s, now() FROM unnest(%s::text[], %s::text[]) AS u(a, h)"
                " ON CONFLICT (organisation_id, address_hash) DO NOTHING",
                [
                    str(actor.organisation.pk),
                    (note or "")[:500],
                    [encrypt(a) for a in unique],
                    [pii_hash(a) for a in unique],
                ],
            )
            added = cursor.rowcount
        audit_record(
            actor=actor,
            action="suppression.import",
            target=actor.organisation,
            details={"added": added, "already_suppressed": len(unique) - added, "rejected": len(rejected)},
        )
    return {"added": added, "already_suppressed": len(unique) - added, "rejected": rejected}


@transaction.atomic
def sending_hold_release(*, actor: Actor, hold: SendingHold) -> SendingHold:
    """Lift a complaint-rate hold: queued messages go out from the next claim on."""
    require_consent_write(actor)
    if hold.organisation_id != actor.organisation.pk:
        raise SendingHold.DoesNotExist
    if hold.released_at is None:
        hold.released_at, hold.released_by = timezone.now(), actor.label[:200]
        hold.save(update_fields=["released_at", "released_by"])
        audit_record(
            actor=actor, action="compliance.sending_hold_release", target=hold, details={"reason": hold.reason}
        )
    return hold


# --- inbound messages: STOP keywords and WhatsApp sessions ------------------------------------------------------------

STOP_WORDS = frozenset({"STOP", "STOPALL", "UNSUBSCRIBE", "CANCEL", "END", "QUIT"})
START_WORDS = frozenset({"START", "UNSTOP"})


def inbound_record(*, actor: Actor, items: Iterable[Mapping[str, Any]]) -> dict[str, int]:
    """Messages contacts sent us (validated: channel sms/whatsapp, `from` in E.164, `body`, `received_at`). Each
    moves the contact's last-inbound time forward (WhatsApp's 24-hour session); STOP turns that channel off for
    every contact with the number, START turns it back on — both audited as preference changes, made by the contact
    (their keyword) and naming who posted it."""
    require_provider_post(actor)
    counts = {"matched": 0, "stopped": 0, "started": 0}
    with transaction.atomic():
        for item in items:
            channel, phone = item["channel"], item["from"]
            contacts = list(Contact.objects.filter(organisation=actor.organisation, phone_hash=pii_hash(phone)))
            if not contacts:
                continue
            counts["matched"] += 1
            with connection.cursor() as cursor:
                cursor.execute(
                    "INSERT INTO compliance_contactchannelactivity (contact_id, channel, last_inbound_at)"
                    " SELECT unnest(%s::bigint[]), %s, %s ON CONFLICT (contact_id, channel)"
                    " DO UPDATE SET last_inbound_at = GREATEST(compliance_contactchannelactivity.last_inbound_at,"
                    " EXCLUDED.last_inbound_at)",
                    [[c.pk for c in contacts], channel, item["received_at"]],
                )
            word = (item.get("body") or "").strip().upper()
            if word not in STOP_WORDS and word not in START_WORDS:
                continue
            for contact in contacts:
                current = set(preference_for(contact).disabled_channels)
                wanted = current | {channel} if word in STOP_WORDS else current - {channel}
                _, diff = preference_update(
                    actor=recipient_actor(actor.organisation, f"{channel} {word} posted by {actor.label}"),
                    contact=contact,
                    changes={"disabled_channels": sorted(wanted)},
                    source=f"{channel}_{'stop' if word in STOP_WORDS else 'start'}",
                )
                if diff:
                    counts["stopped" if word in STOP_WORDS else "started"] += 1
    return counts
