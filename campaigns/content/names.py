"""What a campaign's templates can refer to, and the warnings for names no message of it will provide.

Every template sees `contact`, `campaign`, `organisation`, `unsubscribe_url`, `preferences_url` and `message_id`;
a triggered campaign's templates also see `event` (id, type, properties, occurred_at). A name outside these renders
empty, or fails the message when a template goes further into it (`{{ event.properties.cart.total }}` in a
scheduled campaign), so saving content with one is allowed but warned about, naming it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from audiences.models import ContactAttribute, EventType
from campaigns.content.channels import content_warnings
from campaigns.models import Campaign, CampaignType


def template_names(campaign: Campaign, *, attribute_names: frozenset[str] | None = None) -> dict[str, Any]:
    """The keyword arguments of `content_warnings` for this campaign: the organisation's contact attributes and,
    for a triggered campaign, its event type and the properties the event catalogue has seen on it."""
    if attribute_names is None:
        attribute_names = frozenset(
            ContactAttribute.objects.filter(organisation_id=campaign.organisation_id).values_list("name", flat=True)
        )
    names: dict[str, Any] = {"attribute_names": attribute_names}
    if campaign.type == CampaignType.TRIGGERED and campaign.trigger_event:
        catalogue = (
            EventType.objects.filter(organisation_id=campaign.organisation_id, name=campaign.trigger_event)
            .values_list("properties", flat=True)
            .first()
        )
        names["event_type"] = campaign.trigger_event
        names["event_properties"] = frozenset(catalogue) if catalogue is not None else None
    return names


def campaign_content_warnings(
    campaign: Campaign,
    variants: Iterable[tuple[str, Mapping[str, Any]]] | None = None,
    *,
    attribute_names: frozenset[str] | None = None,
) -> list[str]:
    """Per variant and channel of the campaign, "Variant <name>: <channel>.<field>: <warning>". `variants` are
    (name, content) pairs, the campaign's stored variants when omitted."""
    if variants is None:
        variants = [(variant.name, variant.content) for variant in campaign.variants.all()]
    names = template_names(campaign, attribute_names=attribute_names)
    warnings = []
    for variant_name, content in variants:
        for channel, channel_content in content.items():
            if channel in campaign.channels and isinstance(channel_content, dict):
                warnings.extend(
                    f"Variant {variant_name}: {warning}"
                    for warning in content_warnings(channel, channel_content, **names)
                )
    return warnings
