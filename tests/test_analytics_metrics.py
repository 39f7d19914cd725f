"""Metrics: exact counts and rates for a scripted run, from the triggers on message statuses and engagement events
(duplicates and machine opens included), breakdowns that add up to the totals, tracking endpoints, conversions from
the events API, compaction, the metrics API and its scoping, and event-to-visible latency."""

from __future__ import annotations

import time
from datetime import timedelta
from decimal import Decimal

import pytest
from django.db import connection
from django.utils import timezone

from analytics import services
from analytics.models import EngagementEvent, MetricDelta
from analytics.selectors import campaign_metrics
from audiences.contacts import contacts_upsert_rows
from campaigns.content import links
from campaigns.models import Variant
from delivery import runs, sending
from delivery.models import Message, Run
from tests.factories import CampaignFactory

pytestmark = pytest.mark.django_db

NO_ENGAGEMENT = {"open": 0, "machine_open": 0, "click": 0, "conversion": 0}
CHROME = "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0 Safari/537.36"


def _scripted_run(persona, django_capture_on_commit_callbacks, *, contacts=20, **fields):
    contacts_upsert_rows(
        organisation=persona.organisation,
        rows=[{"external_id": f"m{i}", "email": f"m{i}@example.com", "first_name": f"M{i}"} for i in range(contacts)],
    )
    persona.organisation.sender_email, persona.organisation.postal_address = "news@acme.example", "1 Main St"
    persona.organisation.save()
    campaign = CampaignFactory(
        organisation=persona.organisation,
        channels=["email"],
        variants=False,
        sandbox_profile={"bounced": 0, "failed": 0, "engagement": NO_ENGAGEMENT},
        **fields,
    )
    for name in ("A", "B"):
        Variant.objects.create(
            campaign=campaign,
            name=name,
            allocation_percent=50,
            content={"email": {"subject": name, "html": "<p>Hi <a href='https://acme.example/x'>x</a></p>"}},
        )
    with django_capture_on_commit_callbacks(execute=False):
        assert persona.api.post(f"/api/v1/campaigns/{campaign.pk}/send-now/").status_code == 200
        run = Run.objects.get(campaign=campaign)
        runs.run_prepare(run.pk)
        sending.run_send_for(run.pk, seconds=30)
        runs.run_finish_if_done(run.pk)
    run.refresh_from_db()
    return campaign, run


def _messages(run):
    return list(Message.objects.filter(run=run).order_by("id"))


def _event(message, kind, *, at, dedupe, machine=False, why="", value=None):
    return {
        "message_id": message.pk,
        "kind": kind,
        "at": at,
        "machine": machine,
        "why": why,
        "value": value,
        "dedupe": dedupe,
    }


def test_a_scripted_run_gives_exact_counts_and_rates(teammate, django_capture_on_commit_callbacks):
    campaign, run = _scripted_run(teammate, django_capture_on_commit_callbacks, conversion_event="purchase")
    m = _messages(run)
    later = timezone.now() + timedelta(hours=1)
    for message in m:  # sent an hour ago: clicks and opens now are a person's pace
        Message.objects.filter(pk=message.pk).update(sent_at=timezone.now() - timedelta(hours=1))
    # Opens: m0 twice by a person (plus a double-load in the same 5 s, dropped), m1 by Apple's proxy, m2 once.
    ok = services.engagement_record_tracking
    assert ok(kind="open", message_id=str(m[0].pk), user_agent=CHROME, ip="203.0.113.9", at=later)
    assert not ok(kind="open", message_id=str(m[0].pk), user_agent=CHROME, ip="203.0.113.9", at=later)
    assert ok(
        kind="open", message_id=str(m[0].pk), user_agent=CHROME, ip="203.0.113.9", at=later + timedelta(minutes=3)
    )
    assert ok(kind="open", message_id=str(m[1].pk), user_agent="Mozilla/5.0", ip="17.58.101.1", at=later)
    assert ok(kind="open", message_id=str(m[2].pk), user_agent=CHROME, ip="198.51.100.7", at=later)
    # Clicks: m2 by a person, m3 by a link scanner (a click without an open).
    assert ok(kind="click", message_id=str(m[2].pk), user_agent=CHROME, ip="198.51.100.7", url="https://acme.example/x")
    assert ok(kind="click", message_id=str(m[3].pk), user_agent="Mimecast URL scanner", ip="192.0.2.1", url="https://x")
    # Previews, test sends and unknown messages are not attributed.
    assert not ok(kind="open", message_id="preview-abc", user_agent=CHROME, ip="198.51.100.7")
    assert not ok(kind="open", message_id="999999999", user_agent=CHROME, ip="198.51.100.7")
    # A bounce after delivery, and a complaint, by receipt.
    receipts = {
        "receipts": [
            {"message_id": m[4].pk, "status": "bounced", "reason": "550 mailbox unknown"},
            {"message_id": m[5].pk, "status": "complained"},
            {"message_id": m[5].pk, "status": "complained"},  # a provider retrying its webhook
        ]
    }
    assert teammate.api.post("/api/v1/receipts/", receipts, format="json").status_code == 200
    # An unsubscribe (as the compliance pages record it), twice: counted once.
    for _ in range(2):
        services.engagement_record_many([_event(m[6], "unsubscribe", at=later, dedupe=f"unsubscribe:{m[6].pk}")])
    # A conversion from the events API (m2's contact), repeated: counted once, with its value.
    contact = m[2].contact.external_id
    event = {"id": "order-1", "type": "purchase", "contact": contact, "properties": {"value": 40}}
    for _ in range(2):
        assert teammate.api.post("/api/v1/events/", event, format="json").status_code == 202

    metrics = campaign_metrics(campaign)
    counts, rates = metrics["counts"], metrics["rates"]
    assert counts == {
        "queued": 0,
        "sent": 20,
        "delivered": 19,
        "delivery_confirmed": 19,
        "bounced": 1,
        "failed": 0,
        "cancelled": 0,
        "skipped": 0,
        "held_out": 0,
        "held_out_holdout": 0,
        "held_out_converted": 0,
        "delivered_with_opens": 19,
        "delivered_with_clicks": 19,
        "opened_unique": 3,
        "opened_total": 4,
        "opened_human_unique": 2,
        "opened_human_total": 3,
        "clicked_unique": 2,
        "clicked_total": 2,
        "clicked_human_unique": 1,
        "clicked_human_total": 1,
        "converted": 1,
        "conversions_total": 1,
        "conversion_touches": 1,
        "unsubscribed": 1,
        "complained": 1,
    }
    assert metrics["revenue"] == "40.00"
    assert rates["delivery_rate"] == pytest.approx(19 / 20)
    assert rates["bounce_rate"] == pytest.approx(1 / 20)
    assert rates["open_rate"] == pytest.approx(3 / 19)
    assert rates["human_open_rate"] == pytest.approx(2 / 19)
    assert rates["click_rate"] == pytest.approx(2 / 19)
    assert rates["click_to_open_rate"] == pytest.approx(2 / 3)
    assert rates["conversion_rate"] == pytest.approx(1 / 19)
    assert rates["unsubscribe_rate"] == pytest.approx(1 / 19)
    assert rates["complaint_rate"] == pytest.approx(1 / 19)
    # How machine events were classified is recorded with each.
    kinds = dict(EngagementEvent.objects.filter(is_machine=True).values_list("message_id", "classification"))
    assert kinds == {m[1].pk: "apple_mpp", m[3].pk: "scanner_ua"}

    # Breakdowns add up to the totals.
    for breakdown in ("by_variant", "by_channel", "by_run"):
        for key in counts:
            assert sum(entry["counts"][key] for entry in metrics[breakdown].values()) == counts[key], (breakdown, key)
    assert sorted(entry["name"] for entry in metrics["by_variant"].values()) == ["A", "B"]
    assert list(metrics["by_run"]) == [str(run.pk)]
    # The series over time carries the same totals.
    series = campaign_metrics(campaign, interval="minute")["series"]
    assert sum(point["sent"] for point in series) == 20
    assert sum(point["opened"] for point in series) == 3
    assert metrics["alert"] is None  # 95 % is not below 95 %


def test_reads_do_not_scan_messages_and_compaction_keeps_sums(teammate, django_capture_on_commit_callbacks):
    campaign, run = _scripted_run(teammate, django_capture_on_commit_callbacks)
    m = _messages(run)
    for i, message in enumerate(m):
        services.engagement_record_many([_event(message, "open", at=timezone.now(), dedupe=f"o{i}")])
    before = campaign_metrics(campaign)
    rows_before = MetricDelta.objects.filter(campaign_id=campaign.pk).count()
    assert services.metrics_compact(older_than=timedelta(seconds=-1)) > 0
    after = campaign_metrics(campaign)
    assert MetricDelta.objects.filter(campaign_id=campaign.pk).count() < rows_before
    assert after["counts"] == before["counts"] and after["rates"] == before["rates"]
    with connection.cursor() as cursor:
        cursor.execute(
            "EXPLAIN SELECT channel, variant_id, run_id, metric, sum(count) FROM analytics_metricdelta"
            " WHERE campaign_id = %s GROUP BY 1, 2, 3, 4",
            [str(campaign.pk)],
        )
        plan = " ".join(row[0] for row in cursor.fetchall())
    assert "delivery_message" not in plan


def test_status_changes_move_counts(teammate, django_capture_on_commit_callbacks):
    """A failure after hand-off leaves sent; cancelled messages and deleted runs take their counts along."""
    campaign, run = _scripted_run(teammate, django_capture_on_commit_callbacks, contacts=4)
    m = _messages(run)
    receipts = {"receipts": [{"message_id": m[0].pk, "status": "failed", "reason": "rejected"}]}
    assert teammate.api.post("/api/v1/receipts/", receipts, format="json").status_code == 200
    counts = campaign_metrics(campaign)["counts"]
    assert (counts["sent"], counts["delivered"], counts["failed"]) == (3, 3, 1)
    assert campaign_metrics(campaign)["rates"]["delivery_rate"] == pytest.approx(3 / 4)
    assert counts["sent"] == Run.objects.get(pk=run.pk).sent_count  # the same story as the run's own counters


def test_conversions_of_held_out_recipients_form_the_baseline(teammate, django_capture_on_commit_callbacks):
    from decimal import Decimal as D

    contacts_upsert_rows(
        organisation=teammate.organisation,
        rows=[{"external_id": f"h{i}", "email": f"h{i}@example.com"} for i in range(60)],
    )
    campaign = CampaignFactory(
        organisation=teammate.organisation,
        channels=["email"],
        holdout_percent=D("20"),
        conversion_event="purchase",
        sandbox_profile={"bounced": 0, "failed": 0, "engagement": NO_ENGAGEMENT},
    )
    teammate.organisation.sender_email, teammate.organisation.postal_address = "n@acme.example", "1 Main St"
    teammate.organisation.save()
    with django_capture_on_commit_callbacks(execute=False):
        teammate.api.post(f"/api/v1/campaigns/{campaign.pk}/send-now/")
        run = Run.objects.get(campaign=campaign)
        runs.run_prepare(run.pk)
        sending.run_send_for(run.pk, seconds=30)
    held = Message.objects.filter(run=run, status="holdout").select_related("contact")
    treated = Message.objects.filter(run=run, status__in=["sent", "delivered"]).select_related("contact")
    assert held.count() > 0
    events = [
        {"id": f"buy-{msg.pk}", "type": "purchase", "contact": msg.contact.external_id}
        for msg in [held[0], treated[0], treated[1]]
    ]
    assert teammate.api.post("/api/v1/events/", {"events": events}, format="json").status_code == 202
    metrics = campaign_metrics(campaign)
    assert metrics["counts"]["converted"] == 2  # the held-out conversion is not the campaign's
    from analytics.reports import report_context

    holdout = report_context(campaign)["holdout"]
    assert holdout["held_out"] == held.count() and holdout["held_out_converted"] == 1
    assert holdout["treated"] == treated.count() and holdout["treated_converted"] == 2
    assert holdout["held_out_rate"] == pytest.approx(1 / held.count())


@pytest.mark.parametrize(
    ("kind", "ua", "ip", "method", "seconds", "expected"),
    [
        ("open", CHROME, "203.0.113.9", "GET", 3600, (False, "")),
        ("open", "Mozilla/5.0", "203.0.113.9", "GET", 3600, (True, "apple_mpp")),
        ("open", CHROME, "17.58.101.1", "GET", 3600, (True, "apple_mpp")),
        (
            "open",
            "Mozilla/5.0 (Windows NT 5.1; rv:11.0) Gecko Firefox/11.0 (via ggpht.com GoogleImageProxy)",
            "66.249.84.1",
            "GET",
            3600,
            (False, ""),
        ),
        ("click", "Mozilla/5.0 (compatible; Barracuda Sentinel)", "192.0.2.1", "GET", 3600, (True, "scanner_ua")),
        ("click", "python-requests/2.31", "192.0.2.1", "GET", 3600, (True, "scanner_ua")),
        ("click", "", "192.0.2.1", "GET", 3600, (True, "scanner_ua")),
        ("click", CHROME, "192.0.2.1", "HEAD", 3600, (True, "head_request")),
        ("click", CHROME, "192.0.2.1", "GET", 4, (True, "too_fast")),
        ("click", CHROME, "192.0.2.1", "GET", 12, (False, "")),
        ("open", CHROME, "192.0.2.1", "GET", 1, (True, "too_fast")),
    ],
)
def test_machine_classification(kind, ua, ip, method, seconds, expected):
    assert services.classify(kind, user_agent=ua, ip=ip, method=method, seconds_after_send=seconds) == expected


def test_tracking_endpoints_record_opens_and_clicks(anonymous, teammate, django_capture_on_commit_callbacks):
    campaign, run = _scripted_run(teammate, django_capture_on_commit_callbacks, contacts=2)
    message = _messages(run)[0]
    Message.objects.filter(pk=message.pk).update(sent_at=timezone.now() - timedelta(hours=1))
    pixel = anonymous.get(f"/t/o/{links.open_url(str(message.pk)).rsplit('/t/o/', 1)[1]}", HTTP_USER_AGENT=CHROME)
    assert pixel.status_code == 200 and pixel["Content-Type"] == "image/gif"
    click = links.click_url(str(message.pk), "https://acme.example/sale").rsplit("/t/c/", 1)[1]
    response = anonymous.get(f"/t/c/{click}", HTTP_USER_AGENT=CHROME)
    assert response.status_code == 302 and response["Location"] == "https://acme.example/sale"
    stored = EngagementEvent.objects.filter(message_id=message.pk).order_by("kind")
    assert [(e.kind, e.is_machine, e.url) for e in stored] == [
        ("click", False, "https://acme.example/sale"),
        ("open", False, ""),
    ]
    assert stored[0].campaign_id == campaign.pk and stored[0].variant_id == message.variant_id
    # A tampered pixel is still a pixel, and records nothing.
    assert anonymous.get("/t/o/bogus.gif").status_code == 200
    assert EngagementEvent.objects.filter(message_id=message.pk).count() == 2


def test_metrics_api_filters_validates_and_is_scoped(
    teammate, analyst, outsider, anonymous, django_capture_on_commit_callbacks
):
    campaign, run = _scripted_run(teammate, django_capture_on_commit_callbacks, contacts=6)
    url = f"/api/v1/campaigns/{campaign.pk}/metrics/"
    response = analyst.api.get(url, {"interval": "hour"})
    assert response.status_code == 200
    assert response.data["counts"]["sent"] == 6 and response.data["series"]
    variant = Variant.objects.get(campaign=campaign, name="A")
    only_a = teammate.api.get(url, {"variant": str(variant.pk)}).data
    assert only_a["counts"]["sent"] == Message.objects.filter(run=run, variant=variant).count()
    assert teammate.api.get(url, {"channel": "sms"}).data["counts"]["sent"] == 0
    assert teammate.api.get(url, {"run": str(run.pk)}).data["counts"]["sent"] == 6
    future = (timezone.now() + timedelta(days=1)).isoformat()
    assert teammate.api.get(url, {"since": future}).data["counts"]["sent"] == 0
    bad = teammate.api.get(url, {"interval": "week", "since": "yesterday", "channel": "fax"})
    assert bad.status_code == 400 and {"interval", "channel"} <= set(bad.data)
    assert teammate.api.get(url, {"since": "2026-01-01"}).status_code == 400  # no offset
    assert outsider.api.get(url).status_code == 404
    assert anonymous.get(url).status_code in (401, 403)
    overview = teammate.api.get("/api/v1/analytics/overview/").data["results"]
    assert [row["name"] for row in overview] == [campaign.name] and overview[0]["counts"]["sent"] == 6
    assert outsider.api.get("/api/v1/analytics/overview/").data["results"] == []


def test_delivery_rate_alert(teammate, django_capture_on_commit_callbacks):
    campaign, run = _scripted_run(teammate, django_capture_on_commit_callbacks, contacts=4)
    from analytics import selectors

    m = _messages(run)
    receipts = {"receipts": [{"message_id": m[0].pk, "status": "bounced", "reason": "550"}]}
    teammate.api.post("/api/v1/receipts/", receipts, format="json")
    original = selectors.DELIVERY_ALERT_MIN_SENT
    selectors.DELIVERY_ALERT_MIN_SENT = 1
    try:
        alert = campaign_metrics(campaign)["alert"]
    finally:
        selectors.DELIVERY_ALERT_MIN_SENT = original
    assert alert and "75.0%" in alert


def test_smtp_sends_without_receipts_are_delivered_unless_they_bounce(teammate, django_capture_on_commit_callbacks):
    """SMTP and webhooks confirm nothing: a hand-off that did not bounce counts as delivered, and no alert."""
    campaign, run = _scripted_run(teammate, django_capture_on_commit_callbacks, contacts=4)
    Message.objects.filter(run=run).update(status="sent")  # as the SMTP backend leaves them
    metrics = campaign_metrics(campaign)
    assert (metrics["counts"]["delivered"], metrics["counts"]["delivery_confirmed"]) == (4, 0)
    assert metrics["rates"]["delivery_rate"] == 1.0 and metrics["alert"] is None


def test_an_event_is_visible_in_the_api_well_within_a_second(teammate, django_capture_on_commit_callbacks):
    campaign, run = _scripted_run(teammate, django_capture_on_commit_callbacks, contacts=3)
    message = _messages(run)[0]
    url = f"/api/v1/campaigns/{campaign.pk}/metrics/"
    assert teammate.api.get(url).data["counts"]["opened_total"] == 0
    started = time.monotonic()
    services.engagement_record_many([_event(message, "open", at=timezone.now(), dedupe="live-1")])
    while teammate.api.get(url).data["counts"]["opened_total"] != 1:
        assert time.monotonic() - started < 1.0
    assert time.monotonic() - started < 1.0
    assert teammate.api.get(url).data["last_updated"] is not None


def test_revenue_sums_conversion_values(teammate, django_capture_on_commit_callbacks):
    campaign, run = _scripted_run(teammate, django_capture_on_commit_callbacks, contacts=3)
    m = _messages(run)
    services.engagement_record_many(
        [
            _event(m[0], "conversion", at=timezone.now(), dedupe="c1", value=Decimal("19.99")),
            _event(m[0], "conversion", at=timezone.now(), dedupe="c2", value=Decimal("5.01")),
            _event(m[1], "conversion", at=timezone.now(), dedupe="c3", value=Decimal("10")),
        ]
    )
    metrics = campaign_metrics(campaign)
    assert metrics["revenue"] == "35.00"
    assert (metrics["counts"]["converted"], metrics["counts"]["conversions_total"]) == (2, 3)
