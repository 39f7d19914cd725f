"""Attribution models on a scripted sequence of touches: four messages of one campaign to a contact (one outside the
7-day window) and a 100.00 purchase — last touch credits the latest, first touch the earliest inside the window,
linear all three with the value split in cents; the setting over the API and in the console form."""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal

import pytest
from django.utils import timezone

from analytics import services
from analytics.models import EngagementEvent
from analytics.selectors import campaign_metrics
from delivery.models import Message
from tests.factories import console_client
from tests.test_analytics_metrics import _scripted_run

pytestmark = pytest.mark.django_db


def _touches(run, at):
    first = Message.objects.filter(run=run).order_by("id").first()
    touches = {}
    for key, days in (("old", 10), ("first", 3), ("middle", 2), ("last", 1)):
        if key == "first":
            message = first
        else:
            message = Message.objects.get(pk=first.pk)
            message.pk, message.trigger_key = None, f"touch-{key}"
        message.sent_at = at - timedelta(days=days)
        message.save()
        touches[key] = message.pk
    return first.contact_id, touches


@pytest.mark.parametrize(
    ("model", "expected"),
    [
        ("last_touch", {"last": Decimal("100.00")}),
        ("first_touch", {"first": Decimal("100.00")}),
        ("linear", {"first": Decimal("33.33"), "middle": Decimal("33.33"), "last": Decimal("33.34")}),
    ],
)
def test_it_credits_touches_by_the_model(teammate, django_capture_on_commit_callbacks, model, expected):
    campaign, run = _scripted_run(
        teammate,
        django_capture_on_commit_callbacks,
        contacts=2,
        conversion_event="purchase",
        attribution_days=7,
        attribution_model=model,
    )
    at = timezone.now() + timedelta(minutes=1)
    contact_id, touches = _touches(run, at)
    event = {"event_id": "order-1", "contact_id": contact_id, "type": "purchase", "occurred_at": at,
             "properties": {"value": 100}}  # fmt: skip
    assert services.conversions_from_events(teammate.organisation, [event]) == len(expected)
    credited = {
        e.message_id: e.value for e in EngagementEvent.objects.filter(campaign_id=campaign.pk, kind="conversion")
    }
    assert credited == {touches[key]: value for key, value in expected.items()}
    assert campaign_metrics(campaign)["revenue"] == "100.00"
    # The same event again credits nothing twice.
    assert services.conversions_from_events(teammate.organisation, [event]) == 0


def test_it_sets_the_model_over_the_api_and_the_form(teammate, django_capture_on_commit_callbacks):
    body = {"name": "Attributed", "channels": ["email"], "attribution_model": "linear"}
    created = teammate.api.post("/api/v1/campaigns/", body, format="json")
    assert created.status_code == 201 and created.json()["attribution_model"] == "linear"
    assert created.json()["auto_winner_enabled"] is False and created.json()["auto_winner_min_sample"] == 1000
    bad = teammate.api.post("/api/v1/campaigns/", {**body, "name": "B", "attribution_model": "u"}, format="json")
    assert bad.status_code == 400 and "attribution_model" in bad.data
    url = f"/api/v1/campaigns/{created.json()['id']}/"
    patched = teammate.api.patch(url, {"attribution_model": "first_touch"}, format="json")
    assert patched.status_code == 200 and patched.json()["attribution_model"] == "first_touch"
    page = console_client(teammate).get("/campaigns/new/")
    assert page.status_code == 200 and 'name="attribution_model"' in page.content.decode()
