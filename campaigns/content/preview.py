"""Previews and test sends: a variant rendered for a real (or sample) contact, exactly as it would be sent."""

from __future__ import annotations

import smtplib
import uuid
from collections.abc import Callable
from typing import Any

from django.core.exceptions import ValidationError
from django.core.mail import EmailMultiAlternatives, get_connection
from django.core.validators import validate_email

from audiences import segments as engine
from audiences.access import Actor, require_campaign_write
from audiences.adapters import contact_profile
from audiences.models import Contact, ContactAttribute
from campaigns.audience import audience_condition
from campaigns.content.channels import content_warnings
from campaigns.content.render import MessageContext, render_message
from campaigns.content.templates import TemplateProblem
from campaigns.models import Campaign, Variant
from campaigns.selectors import campaign_get
from compliance.audit import audit_record
from config.errors import Conflict

SAMPLE_PROFILE = {
    "external_id": "sample-contact",
    "email": "alex@example.com",
    "phone": "+447700900123",
    "first_name": "Alex",
    "last_name": "Sample",
    "timezone": "Europe/London",
    "locale": "en-GB",
    "attributes": {},
}
MAX_TEST_RECIPIENTS = 20


def _variant(campaign: Campaign, variant: str | None) -> Variant:
    variants = list(campaign.variants.all())
    if not variant:
        return variants[0]
    for candidate in variants:
        if variant in (candidate.name, str(candidate.pk)):
            return candidate
    raise ValidationError(
        {"variant": [f"No variant {variant!r}; this campaign has {', '.join(v.name for v in variants)}."]}
    )


def preview_contact(campaign: Campaign, contact_id: int | None) -> tuple[dict[str, Any], str]:
    """The profile to preview with: the given contact, else the first of the audience, else a sample."""
    if contact_id is not None:
        contact = Contact.objects.filter(organisation=campaign.organisation, pk=contact_id).first()
        if contact is None:
            raise ValidationError({"contact_id": ["No such contact in this organisation."]})
        return contact_profile(contact), str(contact.pk)
    condition = audience_condition(campaign, refresh_external=False)
    if condition is not None:
        contact = engine.matching_contacts(campaign.organisation, condition).order_by("id").first()
        if contact is not None:
            return contact_profile(contact), str(contact.pk)
    return dict(SAMPLE_PROFILE), "0"


def message_context(campaign: Campaign, profile: dict[str, Any], contact_id: str, message_id: str) -> MessageContext:
    organisation = campaign.organisation
    return MessageContext(
        message_id=message_id,
        contact=profile,
        contact_id=contact_id,
        organisation_id=str(organisation.pk),
        organisation_name=organisation.name,
        postal_address=organisation.postal_address,
        sender_name=organisation.sender_name,
        sender_email=organisation.sender_email,
        reply_to=organisation.reply_to_email,
        campaign_name=campaign.name,
        tracking=campaign.tracking_enabled,
        webhook_secret=organisation.webhook_secret,
    )


def campaign_preview(
    *, actor: Actor, campaign_id: Any, channel: str, variant: str | None = None, contact_id: int | None = None
) -> dict[str, Any]:
    campaign = campaign_get(actor, campaign_id)
    if channel not in campaign.channels:
        raise ValidationError({"channel": [f"This campaign sends {', '.join(campaign.channels) or 'nothing yet'}."]})
    chosen = _variant(campaign, variant)
    if chosen.is_control:
        raise ValidationError({"variant": ["The control variant sends nothing."]})
    content = chosen.content.get(channel, {})
    profile, contact_key = preview_contact(campaign, contact_id)
    context = message_context(campaign, profile, contact_key, f"preview-{uuid.uuid4().hex}")
    try:
        rendered = render_message(channel, content, context)
    except TemplateProblem as exc:
        raise ValidationError({"content": [str(exc)]}) from exc
    attributes = frozenset(
        ContactAttribute.objects.filter(organisation=campaign.organisation).values_list("name", flat=True)
    )
    return {
        "variant": chosen.name,
        "channel": channel,
        "contact": profile,
        "rendered": rendered,
        "warnings": content_warnings(channel, content, attribute_names=attributes),
    }


# Campaigns never import delivery (STYLE.md §11), which owns the channel backends: delivery registers here the
# function that hands SMS and WhatsApp test sends to the backend configured for the channel.
PhoneSender = Callable[..., list[dict[str, Any]]]
_phone_senders: dict[str, PhoneSender] = {}


def register_test_sender(channel: str, sender: PhoneSender) -> None:
    _phone_senders[channel] = sender


def campaign_test_send(
    *,
    actor: Actor,
    campaign_id: Any,
    recipients: list[str] | None = None,
    variant: str | None = None,
    contact_id: int | None = None,
    channel: str = "email",
) -> dict[str, Any]:
    """Send a variant to seed addresses (email) or phones (SMS, WhatsApp) now, rendered for a real or sample
    contact. The links in it are not that contact's: a seed who clicks unsubscribe unsubscribes nobody."""
    require_campaign_write(actor)
    campaign = campaign_get(actor, campaign_id)
    if channel not in ("email", "sms", "whatsapp"):
        raise ValidationError({"channel": ["Test sends go by email, SMS or WhatsApp."]})
    if channel not in campaign.channels:
        raise ValidationError({"channel": [f"This campaign sends {', '.join(campaign.channels) or 'nothing yet'}."]})
    if channel == "email":
        return _test_send_email(actor, campaign, recipients, variant, contact_id)
    return _test_send_phone(actor, campaign, channel, recipients, variant, contact_id)


def _seed_render(campaign: Campaign, channel: str, variant: str | None, contact_id: int | None) -> tuple[Variant, dict]:
    chosen = _variant(campaign, variant)
    if chosen.is_control:
        raise ValidationError({"variant": ["The control variant sends nothing."]})
    profile, _ = preview_contact(campaign, contact_id)
    context = message_context(campaign, profile, "0", f"test-{uuid.uuid4().hex}")
    try:
        return chosen, render_message(channel, chosen.content.get(channel, {}), context)
    except TemplateProblem as exc:
        raise ValidationError({"content": [str(exc)]}) from exc


def _test_send_phone(
    actor: Actor, campaign: Campaign, channel: str, recipients: list[str] | None, variant: str | None, contact: Any
) -> dict[str, Any]:
    from campaigns.services import validate_seed_phones  # services imports this module's neighbours

    try:
        phones = validate_seed_phones(recipients or campaign.seed_phones)
    except ValidationError as exc:
        raise ValidationError({"recipients": exc.message_dict["seed_phones"]}) from exc
    if not phones:
        raise ValidationError({"recipients": ["Give phone numbers, or set the campaign's seed phones."]})
    sender = _phone_senders.get(channel)
    if sender is None:
        raise Conflict(f"No backend sends {channel} test messages here.", code="no_backend")
    chosen, rendered = _seed_render(campaign, channel, variant, contact)
    results = sender(campaign=campaign, variant=chosen, channel=channel, payload=rendered, addresses=phones)
    failed = [r for r in results if r["status"] not in ("sent", "delivered")]
    audit_record(
        actor=actor,
        action="campaign.test_send",
        target=campaign,
        details={"variant": chosen.name, "channel": channel, "recipients": phones, "results": results},
    )
    if failed and len(failed) == len(results):
        reasons = "; ".join(f"{r['address']}: {r['error'] or r['status']}" for r in failed)
        raise Conflict(f"The provider did not take the test message: {reasons}", code="provider_error")
    return {"sent_to": phones, "variant": chosen.name, "channel": channel, "body": rendered["body"], "results": results}


def _test_send_email(
    actor: Actor, campaign: Campaign, recipients: list[str] | None, variant: str | None, contact_id: int | None
) -> dict[str, Any]:
    addresses = list(dict.fromkeys(recipients or campaign.seed_emails))
    if not addresses:
        raise ValidationError({"recipients": ["Give addresses, or set the campaign's seed list."]})
    if len(addresses) > MAX_TEST_RECIPIENTS:
        raise ValidationError({"recipients": [f"At most {MAX_TEST_RECIPIENTS} addresses."]})
    bad = []
    for address in addresses:
        try:
            validate_email(address)
        except ValidationError:
            bad.append(address)
    if bad:
        raise ValidationError({"recipients": [f"Not email addresses: {', '.join(bad)}."]})
    chosen, email = _seed_render(campaign, "email", variant, contact_id)
    if not email["from_email"]:
        raise ValidationError({"content": ["Set a From address (or the organisation's sender) first."]})
    message = EmailMultiAlternatives(
        subject=f"[Test] {email['subject']}",
        body=email["text"],
        from_email=email["from"],
        to=addresses,
        reply_to=[email["reply_to"]] if email["reply_to"] else None,
        headers=email["headers"],
        connection=get_connection(),
    )
    message.attach_alternative(email["html"], "text/html")
    try:
        message.send()
    except (smtplib.SMTPException, OSError) as exc:
        raise Conflict(f"The mail server did not take the message: {exc}", code="mail_server_error") from exc
    audit_record(
        actor=actor,
        action="campaign.test_send",
        target=campaign,
        details={"variant": chosen.name, "channel": "email", "recipients": addresses},
    )
    return {"sent_to": addresses, "variant": chosen.name, "channel": "email", "subject": message.subject}
