"""Consuming events from an external event_service (the HTTP client side of the event_service adapter).

The embedded default is the event API: apps post to us. When EVENT_SERVICE_URL is set, a periodic task also pulls
each organisation's feed: `GET {base}/organisations/{slug}/events?after=<cursor>&limit=1000` answers
`{"events": [...], "next": "<cursor>"}` with events in the same shape the API takes. They go through the same
ingestion (idempotent on event id, so a page read twice changes nothing), and the cursor only moves once a page is
stored, in the same transaction.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

import httpx
from django.conf import settings
from django.db import transaction

from audiences.access import system_actor
from audiences.adapters import AdapterError
from audiences.events import MAX_BATCH, events_ingest
from audiences.models import EventFeedCursor, Organisation


class HttpEventFeed:
    def __init__(self, base_url: str, token: str = "", timeout: float = 10.0, client: httpx.Client | None = None):
        self.client = client or httpx.Client(
            base_url=base_url.rstrip("/"),
            timeout=httpx.Timeout(timeout),
            headers={"Authorization": f"Bearer {token}"} if token else {},
            follow_redirects=False,
        )

    def page(self, organisation: Organisation, after: str) -> tuple[list[Any], str]:
        try:
            response = self.client.get(
                f"/organisations/{quote(organisation.slug)}/events", params={"after": after, "limit": MAX_BATCH}
            )
        except httpx.HTTPError as exc:
            raise AdapterError(f"event_service unreachable: {exc}") from exc
        if response.status_code != 200:
            raise AdapterError(f"event_service answered {response.status_code}")
        try:
            data = response.json()
        except ValueError as exc:
            raise AdapterError("event_service answered something that is not JSON") from exc
        events = data.get("events") if isinstance(data, dict) else None
        if not isinstance(events, list) or len(events) > MAX_BATCH:
            raise AdapterError("event_service page has no events list (or more than 1,000)")
        return events, str(data.get("next") or after)


def event_feed() -> HttpEventFeed | None:
    if not settings.EVENT_SERVICE_URL:
        return None
    return HttpEventFeed(settings.EVENT_SERVICE_URL, settings.EVENT_SERVICE_TOKEN, settings.EXTERNAL_HTTP_TIMEOUT)


def event_feed_pull(organisation: Organisation, *, feed: HttpEventFeed, max_pages: int = 20) -> dict[str, int]:
    """Read pages until the feed is drained (or max_pages), ingesting each and moving the cursor with it."""
    actor = system_actor(organisation, "event_service feed")
    totals = {"pages": 0, "accepted": 0, "duplicates": 0, "rejected": 0}
    for _ in range(max_pages):
        cursor, _created = EventFeedCursor.objects.get_or_create(organisation=organisation)
        events, following = feed.page(organisation, cursor.position)
        if not events:
            break
        with transaction.atomic():
            result = events_ingest(actor=actor, items=events)
            EventFeedCursor.objects.filter(pk=cursor.pk).update(position=following)
        totals["pages"] += 1
        totals["accepted"] += result.accepted
        totals["duplicates"] += result.duplicates
        totals["rejected"] += len(result.errors)
        if following == cursor.position:
            break
    return totals
