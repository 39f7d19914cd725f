"""Previews and test sends: a variant rendered for a real (or sample) contact, exactly as it would be sent."""

from __future__ import annotations

import smtplib
import uuid
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


def campaign_test_send(
    *,
    actor: Actor,
    campaign_id: Any,
    recipients: list[str] | None = None,
    variant: str | None = None,
    contact_id: int | None = None,
) -> dict[str, Any]:
    """Send the email of a variant to seed addresses now, rendered for a real or sample contact."""
    require_campaign_write(actor)
    campaign = campaign_get(actor, campaign_id)
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
    preview = campaign_preview(
        actor=actor, campaign_id=campaign.pk, channel="email", variant=variant, contact_id=contact_id
    )
    email = preview["rendered"]
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
        details={"variant": preview["variant"], "recipients": addresses},
    )
    return {"sent_to": addresses, "variant": preview["variant"], "subject": message.subject}
