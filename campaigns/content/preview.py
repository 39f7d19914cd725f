"""Previews and test sends: a variant rendered for a real (or sample) contact, exactly as it would be sent, with
the same context as the real send (render.Renderer): for a triggered campaign that includes an event of its
type — the contact's latest, else the organisation's latest, else an example from the event catalogue, else an
empty example, always labelled."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC
from typing import Any

from django.core.exceptions import ValidationError
from django.core.validators import validate_email
from django.utils import timezone

from audiences import segments as engine
from audiences.access import Actor, require_campaign_write
from audiences.adapters import AdapterError, template_profile
from audiences.models import Contact, Event, EventType
from campaigns.audience import audience_condition
from campaigns.content.channels import content_warnings
from campaigns.content.names import template_names
from campaigns.content.render import MessageContext, render_message, trigger_event
from campaigns.content.sms import sms_over_limit
from campaigns.content.sms_longest import sms_length_for_longest_values
from campaigns.content.templates import TemplateProblem
from campaigns.models import Campaign, CampaignType, Variant
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
        return _profile_of(contact), str(contact.pk)
    condition = audience_condition(campaign, refresh_external=False)
    if condition is not None:
        contact = engine.matching_contacts(campaign.organisation, condition).order_by("id").first()
        if contact is not None:
            return _profile_of(contact), str(contact.pk)
    return dict(SAMPLE_PROFILE), "0"


def _profile_of(contact: Contact) -> dict[str, Any]:
    # The profile a real send renders with (the external user_360's when configured), so a preview shows that.
    # A failing user_360 is reported as the preview's problem (the console lists it beside the form), not a 500.
    try:
        return template_profile(contact)
    except AdapterError as exc:
        raise ValidationError({"contact": [f"The contact's user_360 profile could not be read: {exc}"]}) from exc


# A catalogue property with no scalar example (objects and lists keep none) previews as its type's empty value.
_EMPTY_OF_TYPE: dict[str, Any] = {"number": 0, "boolean": False, "list": [], "object": {}, "date": "", "string": ""}


def _iso_utc(moment: Any) -> str:
    return moment.astimezone(UTC).isoformat()


@dataclass(frozen=True)
class SampleEvent:
    event: dict[str, Any]
    source: str  # chosen | contact | organisation | catalogue | example
    label: str


def _chosen_event(campaign: Campaign, event_id: str) -> SampleEvent:
    if campaign.type != CampaignType.TRIGGERED or not campaign.trigger_event:
        raise ValidationError({"event_id": ["Only a triggered campaign's messages have an event."]})
    stored = Event.objects.filter(organisation_id=campaign.organisation_id, event_id=event_id).first()
    if stored is None:
        raise ValidationError({"event_id": [f"No event {event_id!r} in this organisation."]})
    if stored.type != campaign.trigger_event:
        raise ValidationError(
            {
                "event_id": [
                    f"Event {event_id!r} is {stored.type!r}; this campaign is triggered by {campaign.trigger_event!r}."
                ]
            }
        )
    occurred = _iso_utc(stored.occurred_at)
    return SampleEvent(
        trigger_event(stored.event_id, stored.type, stored.properties, occurred),
        "chosen",
        f"Event: {stored.event_id} ({stored.type!r}, {occurred}).",
    )


def preview_event(campaign: Campaign, contact_key: str, *, event_id: str | None = None) -> SampleEvent | None:
    """The event a triggered campaign's preview or test send renders with (None for other campaigns): the stored
    event asked for (`event_id`, the sender's id), else the previewed contact's latest event of the trigger type,
    else the organisation's latest (stored events, each one index probe), else an example built from the event
    catalogue's observed properties, else an example with no properties. The label says which, so an example is
    never taken for real data."""
    if event_id:
        return _chosen_event(campaign, event_id)
    event_type = campaign.trigger_event
    if campaign.type != CampaignType.TRIGGERED or not event_type:
        return None
    events = Event.objects.filter(organisation_id=campaign.organisation_id, type=event_type).order_by("-occurred_at")
    stored = events.filter(contact_id=int(contact_key)).first() if contact_key != "0" else None
    source = "contact"
    if stored is None:
        stored, source = events.first(), "organisation"
    if stored is not None:
        whose = "this contact's latest" if source == "contact" else "the latest"
        return SampleEvent(
            trigger_event(stored.event_id, stored.type, stored.properties, _iso_utc(stored.occurred_at)),
            source,
            f"Event: {whose} {event_type!r} event ({stored.event_id}, {_iso_utc(stored.occurred_at)}).",
        )
    now = _iso_utc(timezone.now())
    catalogue = EventType.objects.filter(organisation_id=campaign.organisation_id, name=event_type).first()
    if catalogue is not None and catalogue.properties:
        properties = {
            name: (seen.get("examples") or [_EMPTY_OF_TYPE.get(seen.get("type", ""), "")])[0]
            for name, seen in catalogue.properties.items()
        }
        return SampleEvent(
            trigger_event("example-event", event_type, properties, now),
            "catalogue",
            f"Example event: no stored {event_type!r} event, so its properties are examples from the event catalogue.",
        )
    return SampleEvent(
        trigger_event("example-event", event_type, {}, now),
        "example",
        f"Example event with no properties: no {event_type!r} event has been received yet.",
    )


def message_context(
    campaign: Campaign,
    profile: dict[str, Any],
    contact_id: str,
    message_id: str,
    *,
    event: Mapping[str, Any] | None = None,
) -> MessageContext:
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
        event=event,
        campaign_id=str(campaign.pk),
        category=campaign.category,
        triggered=campaign.type == "triggered",
    )


@dataclass(frozen=True)
class Preview:
    rendered: dict[str, Any]
    contact: dict[str, Any]
    sample: SampleEvent | None


def preview_render(
    campaign: Campaign,
    channel: str,
    content: Mapping[str, Any],
    *,
    contact_id: int | None,
    message_id: str,
    seed: bool = False,
    event_id: str | None = None,
) -> Preview:
    """One channel's content rendered as a real send would render it for the previewed contact (and, triggered,
    the sample event). A seed's copy (`seed`) is rendered as contact "0": its links name nobody. Template problems
    are a ValidationError on `content`; with an example event they say so."""
    profile, contact_key = preview_contact(campaign, contact_id)
    sample = preview_event(campaign, contact_key, event_id=event_id)
    event = sample.event if sample is not None else None
    context = message_context(campaign, profile, "0" if seed else contact_key, message_id, event=event)
    try:
        rendered = render_message(channel, content, context)
    except TemplateProblem as exc:
        note = f" ({sample.label})" if sample is not None and sample.source in ("catalogue", "example") else ""
        raise ValidationError({"content": [f"{exc}{note}"]}) from exc
    return Preview(rendered, profile, sample)


def campaign_preview(
    *,
    actor: Actor,
    campaign_id: Any,
    channel: str,
    variant: str | None = None,
    contact_id: int | None = None,
    event_id: str | None = None,
) -> dict[str, Any]:
    campaign = campaign_get(actor, campaign_id)
    if channel not in campaign.channels:
        raise ValidationError({"channel": [f"This campaign sends {', '.join(campaign.channels) or 'nothing yet'}."]})
    chosen = _variant(campaign, variant)
    if chosen.is_control:
        raise ValidationError({"variant": ["The control variant sends nothing."]})
    content = chosen.content.get(channel, {})
    message_id = f"preview-{uuid.uuid4().hex}"
    preview = preview_render(
        campaign, channel, content, contact_id=contact_id, message_id=message_id, event_id=event_id
    )
    sample = preview.sample
    result: dict[str, Any] = {
        "variant": chosen.name,
        "channel": channel,
        "contact": preview.contact,
        # A triggered campaign's sample event, and where it came from (contact, organisation, catalogue, example).
        "event": sample.event if sample else None,
        "event_source": {"source": sample.source, "label": sample.label} if sample else None,
        "rendered": preview.rendered,
        "warnings": content_warnings(channel, content, **template_names(campaign)),
    }
    if channel == "sms":
        # The previewed contact's parts are in rendered.length; these are the most any contact's can come to.
        result["longest_values"] = sms_length_for_longest_values(
            campaign, content, profile=preview.contact, event=sample.event if sample else None
        )
    return result


# Campaigns never import delivery (delivery depends on campaigns), which owns the channel backends: delivery registers
# here the functions that hand test sends to a backend — SMS and WhatsApp to the channel's configured backend, email
# to the email channel's own path (real mail, signed like every send).
TestSender = Callable[..., list[dict[str, Any]]]
_test_senders: dict[str, TestSender] = {}


def register_test_sender(channel: str, sender: TestSender) -> None:
    _test_senders[channel] = sender


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
    content = chosen.content.get(channel, {})
    message_id = f"test-{uuid.uuid4().hex}"
    return chosen, preview_render(
        campaign, channel, content, contact_id=contact_id, message_id=message_id, seed=True
    ).rendered


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
    sender = _test_senders.get(channel)
    if sender is None:
        raise Conflict(f"No backend sends {channel} test messages here.", code="no_backend")
    chosen, rendered = _seed_render(campaign, channel, variant, contact)
    if channel == "sms":
        # The real send would refuse it (delivery.sending measures every rendered SMS): say so instead of sending.
        multipart = chosen.content.get("sms", {}).get("allow_multipart") is True or campaign.sms_allow_multipart
        too_long = sms_over_limit(rendered["length"], multipart=multipart)
        if too_long:
            raise ValidationError({"content": [f"{too_long}: a real send would not send it."]})
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
    sender = _test_senders.get("email")
    if sender is None:
        raise Conflict("No backend sends email test messages here.", code="no_backend")
    chosen, email = _seed_render(campaign, "email", variant, contact_id)
    if not email["from_email"]:
        raise ValidationError({"content": ["Set a From address (or the organisation's sender) first."]})
    email = {**email, "subject": f"[Test] {email['subject']}"}
    results = sender(campaign=campaign, variant=chosen, channel="email", payload=email, addresses=addresses)
    audit_record(
        actor=actor,
        action="campaign.test_send",
        target=campaign,
        details={"variant": chosen.name, "channel": "email", "recipients": addresses, "results": results},
    )
    failed = [r for r in results if r["status"] not in ("sent", "delivered")]
    if failed and len(failed) == len(results):
        reasons = "; ".join(f"{r['address']}: {r['error'] or r['status']}" for r in failed)
        raise Conflict(f"The mail server did not take the message: {reasons}", code="mail_server_error")
    return {
        "sent_to": addresses,
        "variant": chosen.name,
        "channel": "email",
        "subject": email["subject"],
        "results": results,
    }
