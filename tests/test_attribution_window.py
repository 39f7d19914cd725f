"""Attribution by the message's send time: a conversion is credited to the campaign's messages sent to the contact
within the window before it, however old their run is (a triggered campaign activated 9 days ago still converts
today); the window's edges are exact; every model counts one conversion per event, its credit split over the
touches under linear; reports say which model. Each expected figure is worked out by hand in the test."""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal

import pytest
from django.utils import timezone

from analytics import services
from analytics.models import EngagementEvent
from analytics.selectors import campaign_metrics
from delivery.models import Message, Run
from tests.factories import console_client
from tests.test_analytics_metrics import _scripted_run

pytestmark = pytest.mark.django_db


def _purchase(contact_id: int, at, value: int | str = 40, event_id: str = "order-1") -> dict:
    return {"event_id": event_id, "contact_id": contact_id, "type": "purchase", "occurred_at": at,
            "properties": {"value": value}}  # fmt: skip


def test_a_message_sent_seconds_before_converts_whatever_the_runs_age(teammate, django_capture_on_commit_callbacks):
    """The run was activated 9 days ago (a triggered campaign's long-lived run); its message to the buyer went out
    5 seconds before the purchase: 1 conversion of 1, over the events API."""
    campaign, run = _scripted_run(
        teammate, django_capture_on_commit_callbacks, contacts=1, conversion_event="purchase", attribution_days=7
    )
    now = timezone.now()
    Run.objects.filter(pk=run.pk).update(created_at=now - timedelta(days=9), started_sending_at=now - timedelta(days=9))
    message = Message.objects.get(run=run)
    Message.objects.filter(pk=message.pk).update(sent_at=now - timedelta(seconds=5))
    event = {"id": "order-9d", "type": "purchase", "contact": message.contact.external_id,
             "occurred_at": now.isoformat(), "properties": {"value": 40}}  # fmt: skip
    assert teammate.api.post("/api/v1/events/", event, format="json").status_code == 202
    api = teammate.api.get(f"/api/v1/campaigns/{campaign.pk}/metrics/").json()
    assert (api["counts"]["conversions_total"], api["counts"]["converted"]) == (1, 1)
    assert api["rates"]["conversion_rate"] == 1.0 and api["revenue"] == "40.00"


@pytest.mark.parametrize(
    ("before", "credited"),
    [
        (timedelta(days=7), 1),  # exactly the window: in
        (timedelta(days=7, seconds=1), 0),  # one second more: out
        (timedelta(seconds=0), 1),  # sent at the very moment of the purchase: in
        (timedelta(seconds=-1), 0),  # sent after the purchase: out
    ],
)
def test_the_windows_edges_are_exact(teammate, django_capture_on_commit_callbacks, before, credited):
    campaign, run = _scripted_run(
        teammate, django_capture_on_commit_callbacks, contacts=1, conversion_event="purchase", attribution_days=7
    )
    at = timezone.now().replace(microsecond=0)
    message = Message.objects.get(run=run)
    Message.objects.filter(pk=message.pk).update(sent_at=at - before)
    assert services.conversions_from_events(teammate.organisation, [_purchase(message.contact_id, at)]) == credited
    assert campaign_metrics(campaign)["counts"]["conversions_total"] == credited


def _three_touches(run, at) -> tuple[int, list[int]]:
    """The run's one message and two more to the same contact (another run's, as a triggered campaign sends),
    sent 3, 2 and 1 days before `at`; and a fourth 10 days before, outside a 7-day window."""
    first = Message.objects.get(run=run)
    ids = []
    for key, days in (("", 3), ("t2", 2), ("t1", 1), ("old", 10)):
        message = Message.objects.get(pk=first.pk)
        if key:
            message.pk, message.trigger_key = None, f"touch-{key}"
        message.sent_at = at - timedelta(days=days)
        message.save()
        ids.append(message.pk)
    return first.contact_id, ids[:3]


@pytest.mark.parametrize(
    ("model", "credits", "values"),
    [
        # (touch 3 days before, 2 days before, 1 day before)
        ("last_touch", [None, None, Decimal("1")], [None, None, Decimal("90.00")]),
        ("first_touch", [Decimal("1"), None, None], [Decimal("90.00"), None, None]),
        (
            "linear",
            [Decimal("0.333333"), Decimal("0.333333"), Decimal("0.333334")],
            [Decimal("30.00"), Decimal("30.00"), Decimal("30.00")],
        ),
    ],
)
def test_one_purchase_is_one_conversion_under_every_model(
    teammate, django_capture_on_commit_callbacks, model, credits, values
):
    """One purchase of 90.00 after three messages (and one older than the window): one conversion, conversion
    rate 1/4 of the four delivered messages, 90.00 of revenue, whichever model credits it."""
    campaign, run = _scripted_run(
        teammate,
        django_capture_on_commit_callbacks,
        contacts=1,
        conversion_event="purchase",
        attribution_days=7,
        attribution_model=model,
    )
    at = timezone.now().replace(microsecond=0)
    contact_id, touches = _three_touches(run, at)
    expected_touches = sum(1 for c in credits if c is not None)
    assert services.conversions_from_events(teammate.organisation, [_purchase(contact_id, at, 90)]) == expected_touches
    stored = {
        e.message_id: (e.credit, e.value)
        for e in EngagementEvent.objects.filter(campaign_id=campaign.pk, kind="conversion")
    }
    assert stored == {
        touch: (credit, value) for touch, credit, value in zip(touches, credits, values, strict=True) if credit
    }
    assert sum(c for c, _ in stored.values()) == 1 and sum(v for _, v in stored.values()) == Decimal("90.00")

    api = teammate.api.get(f"/api/v1/campaigns/{campaign.pk}/metrics/").json()
    assert api["counts"]["delivered"] == 4
    assert api["counts"]["conversions_total"] == 1
    assert api["counts"]["converted"] == 1
    assert api["counts"]["conversion_touches"] == expected_touches
    assert api["rates"]["conversion_rate"] == pytest.approx(1 / 4)
    assert api["revenue"] == "90.00"
    assert api["attribution"] == {
        "conversion_event": "purchase",
        "window_days": 7,
        "model": model,
        "model_label": {"last_touch": "Last touch", "first_touch": "First touch", "linear": "Linear"}[model],
    }
    page = console_client(teammate).get(f"/analytics/campaigns/{campaign.pk}/").content.decode()
    label = api["attribution"]["model_label"].lower()
    assert f"{label} attribution — each event is one conversion" in page
    assert '<tr data-metric="conversion_rate"><th>Conversion rate</th><td class="num">25.0 %</td></tr>' in page
    # The same event again credits nothing twice.
    assert services.conversions_from_events(teammate.organisation, [_purchase(contact_id, at, 90)]) == 0
    assert campaign_metrics(campaign)["counts"]["conversions_total"] == 1


def test_linear_credit_per_variant_adds_up_to_one_conversion(teammate, django_capture_on_commit_callbacks):
    """Two touches on different variants split a purchase in halves: each variant shows 0.5 conversions."""
    campaign, run = _scripted_run(
        teammate,
        django_capture_on_commit_callbacks,
        contacts=2,
        conversion_event="purchase",
        attribution_model="linear",
    )
    at = timezone.now().replace(microsecond=0)
    first, second = Message.objects.filter(run=run).order_by("id")
    other_variant = (
        campaign.variants.exclude(pk=first.variant_id).get() if first.variant_id == second.variant_id else None
    )
    copy = Message.objects.get(pk=second.pk)
    copy.pk, copy.trigger_key, copy.contact_id = None, "second-touch", first.contact_id
    copy.variant_id = other_variant.pk if other_variant else second.variant_id
    copy.sent_at = at - timedelta(hours=1)
    copy.save()
    Message.objects.filter(pk=first.pk).update(sent_at=at - timedelta(hours=2))
    assert services.conversions_from_events(teammate.organisation, [_purchase(first.contact_id, at, "10.01")]) == 2
    metrics = campaign_metrics(campaign)
    by_variant = {entry["name"]: entry for entry in metrics["by_variant"].values()}
    assert sorted(entry["counts"]["conversions_total"] for entry in by_variant.values()) == [0.5, 0.5]
    # The value in cents: 5.00 to the earlier touch, the remainder 5.01 to the latest.
    assert sorted(entry["revenue"] for entry in by_variant.values()) == ["5.00", "5.01"]
    assert metrics["counts"]["conversions_total"] == 1 and metrics["revenue"] == "10.01"
