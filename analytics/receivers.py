"""Analytics listens to the lower apps (STYLE.md §11): conversions are attributed as events are stored."""

from __future__ import annotations

from typing import Any

from django.dispatch import receiver

from analytics.services import conversions_from_events
from audiences.signals import events_received


@receiver(events_received)
def attribute_conversions(sender: Any, organisation: Any, events: list[dict[str, Any]], **kwargs: Any) -> None:
    """Inside the ingestion transaction, so a conversion is visible in the metrics as soon as the event is."""
    conversions_from_events(organisation, events)
