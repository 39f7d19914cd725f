"""A report reconciles: a two-channel campaign (email and SMS) with a holdout, whose every figure is set by the test
— a bounce, three email opens, two SMS "opens" that are no opens, two clicks, two purchases credited linearly over
both channels and one by a held-out person — is read from the report page, the CSV, the PDF (its text) and the
API, and each figure is compared with the one worked out by hand here."""

from __future__ import annotations

import csv
import io
import re
import uuid
from decimal import Decimal

import pytest
from django.utils import timezone
from pypdf import PdfReader

from analytics import services
from audiences.contacts import contacts_upsert_rows
from audiences.models import Contact
from audiences.segments import in_holdout
from campaigns.models import Variant
from delivery import runs, sending
from delivery.models import Message, Run
from tests.factories import CampaignFactory, console_client
from tests.test_analytics_metrics import NO_ENGAGEMENT

pytestmark = pytest.mark.django_db


def _pct(value: float | None) -> str:
    return "—" if value is None else f"{value * 100:.1f} %"


def _campaign(persona, django_capture_on_commit_callbacks):
    organisation = persona.organisation
    contacts_upsert_rows(
        organisation=organisation,
        rows=[
            {"external_id": f"r{i}", "email": f"r{i}@example.com", "phone": f"+4477009001{i:02d}"} for i in range(10)
        ],
    )
    organisation.sender_email, organisation.currency = "news@acme.example", "EUR"
    organisation.save()
    # The holdout is a hash of the campaign's id and the contact's: an id that holds out exactly two of the ten.
    contacts = list(Contact.objects.filter(organisation=organisation).values_list("id", flat=True))
    campaign_id = next(
        candidate
        for candidate in iter(uuid.uuid4, None)
        if sum(in_holdout(str(candidate), contact, 20) for contact in contacts) == 2
    )
    campaign = CampaignFactory(
        id=campaign_id,
        organisation=organisation,
        name="Reconciled",
        channels=["email", "sms"],
        variants=False,
        holdout_percent=Decimal("20"),
        conversion_event="purchase",
        attribution_days=7,
        attribution_model="linear",
        audience_rules={"field": "email", "op": "exists"},
        sandbox_profile={"bounced": 0, "failed": 0, "engagement": NO_ENGAGEMENT},
    )
    for name in ("A", "B"):
        Variant.objects.create(
            campaign=campaign,
            name=name,
            allocation_percent=50,
            content={"email": {"subject": name, "html": "<p>Hi</p>"}, "sms": {"body": f"Hi from {name}"}},
        )
    with django_capture_on_commit_callbacks(execute=False):
        assert persona.api.post(f"/api/v1/campaigns/{campaign.pk}/send-now/").status_code == 200
        run = Run.objects.get(campaign=campaign)
        runs.run_prepare(run.pk)
        sending.run_send_for(run.pk, seconds=30)
        runs.run_finish_if_done(run.pk)
    return campaign, run


def _page_figures(html: str) -> dict[str, str]:
    return dict(re.findall(r'<tr data-metric="(\w+)"><th>[^<]*</th><td class="num">(.*?)</td></tr>', html))


def test_page_csv_pdf_and_api_agree_with_the_figures_worked_out_by_hand(teammate, django_capture_on_commit_callbacks):
    campaign, run = _campaign(teammate, django_capture_on_commit_callbacks)
    messages = Message.objects.filter(run=run).order_by("contact_id", "channel")
    emails = [m for m in messages if m.channel == "email" and m.status != "holdout"]
    sms = [m for m in messages if m.channel == "sms" and m.status != "holdout"]
    held = [m for m in messages if m.status == "holdout"]
    people = len(emails)  # treated people: one email and one SMS each
    held_people = len({m.contact_id for m in held})
    assert (people, len(sms), held_people, len(held)) == (8, 8, 2, 4)  # two messages for each held-out person

    now = timezone.now()
    c0, c1 = emails[0].contact_id, emails[1].contact_id
    assert (
        teammate.api.post(
            "/api/v1/receipts/", {"receipts": [{"message_id": emails[-1].pk, "status": "bounced"}]}, format="json"
        ).status_code
        == 200
    )
    events = [{"message_id": m.pk, "kind": "open", "at": now, "dedupe": f"open-{m.pk}"} for m in emails[:3]]
    # A provider that reports SMS "opens": an SMS has no open, so they count nowhere.
    events += [{"message_id": m.pk, "kind": "open", "at": now, "dedupe": f"open-{m.pk}"} for m in sms[:2]]
    events += [{"message_id": m.pk, "kind": "click", "at": now, "dedupe": f"click-{m.pk}"} for m in (emails[0], sms[0])]
    services.engagement_record_many(events)
    external = {m.contact_id: m.contact.external_id for m in messages.select_related("contact")}
    purchases = [
        {"id": "p-c0", "type": "purchase", "contact": external[c0], "properties": {"value": "60.00"}},
        {"id": "p-c1", "type": "purchase", "contact": external[c1], "properties": {"value": "25.50"}},
        {"id": "p-held", "type": "purchase", "contact": external[held[0].contact_id], "properties": {"value": 10}},
    ]
    assert teammate.api.post("/api/v1/events/", {"events": purchases}, format="json").status_code == 202

    # By hand: 2 messages per treated person, one email bounced; opens on email only; each purchase one conversion,
    # its credit split 1/2 + 1/2 over the buyer's email and SMS (so each message's converted share is 1/2).
    sent, delivered = 2 * people, 2 * people - 1
    expected_counts = {
        "sent": sent,
        "delivered": delivered,
        "bounced": 1,
        "delivered_with_opens": people - 1,
        "opened_unique": 3,
        "opened_total": 3,
        "clicked_unique": 2,
        "conversions_total": 2,
        "converted": 2,
        "conversion_touches": 4,
        "held_out": 2 * held_people,
    }
    expected_rates = {
        "delivery_rate": delivered / sent,
        "open_rate": 3 / (people - 1),
        "click_rate": 2 / delivered,
        "click_to_open_rate": 2 / 3,
        "conversion_rate": 2 / delivered,
        "bounce_rate": 1 / sent,
    }
    revenue = "85.50"  # the held-out person's 10 is the baseline's, not the campaign's
    expected_channels = {
        "email": {"sent": people, "delivered": people - 1, "opened_unique": 3, "open_rate": 3 / (people - 1),
                  "click_rate": 1 / (people - 1), "revenue": "42.75"},
        "sms": {"sent": people, "delivered": people, "opened_unique": 0, "open_rate": None,
                "click_rate": 1 / people, "revenue": "42.75"},
    }  # fmt: skip
    expected_holdout = {
        "treated": people,
        "treated_converted": 2,
        "treated_rate": 2 / people,
        "held_out": held_people,
        "held_out_converted": 1,
        "held_out_rate": 1 / held_people,
    }

    # API
    api = teammate.api.get(f"/api/v1/campaigns/{campaign.pk}/metrics/").json()
    assert {key: api["counts"][key] for key in expected_counts} == expected_counts
    for key, value in expected_rates.items():
        assert api["rates"][key] == pytest.approx(value), key
    assert (api["revenue"], api["currency"]) == (revenue, "EUR")
    assert api["attribution"]["model"] == "linear"
    for channel, figures in expected_channels.items():
        entry = api["by_channel"][channel]
        assert entry["counts"]["sent"] == figures["sent"] and entry["counts"]["delivered"] == figures["delivered"]
        assert entry["counts"]["opened_unique"] == figures["opened_unique"], channel
        assert entry["rates"]["open_rate"] == (pytest.approx(figures["open_rate"]) if figures["open_rate"] else None)
        assert entry["rates"]["click_rate"] == pytest.approx(figures["click_rate"])
        assert entry["revenue"] == figures["revenue"]

    # Page
    html = console_client(teammate).get(f"/analytics/campaigns/{campaign.pk}/").content.decode()
    figures = _page_figures(html)
    for key, value in expected_counts.items():
        if key in figures:
            assert figures[key] == str(value), key
    assert {"sent", "delivered", "opened_unique", "conversions_total", "converted"} <= set(figures)
    for key, value in expected_rates.items():
        assert figures[key] == _pct(value), key
    assert figures["revenue"] == f"{revenue} EUR"
    email_row = re.search(r'<tr data-channel="sms">(.*?)</tr>', html).group(1)
    assert "no opens on this channel" in email_row
    holdout_rows = dict(re.findall(r'<tr data-row="(\w+)">(.*?)</tr>', html))
    treated_cells = re.findall(r'<td class="num">([^<]*)</td>', holdout_rows["treated"])
    held_cells = re.findall(r'<td class="num">([^<]*)</td>', holdout_rows["held_out"])
    assert treated_cells[:3] == [str(people), "2", _pct(2 / people)]
    assert held_cells[:3] == [str(held_people), "1", _pct(1 / held_people)]
    assert "linear attribution" in html and "Amounts in EUR" in html

    # CSV
    response = teammate.api.get(f"/api/v1/campaigns/{campaign.pk}/report.csv")
    rows = list(csv.reader(io.StringIO(response.content.decode())))
    total = {row[3]: (row[4], row[5]) for row in rows if row[1] == "total"}
    for key, value in expected_counts.items():
        assert float(total[key][0]) == value, key
    for key, value in expected_rates.items():
        assert float(total[key][0]) == pytest.approx(value) and total[key][1] == "ratio", key
    assert total["revenue"] == (revenue, "EUR")
    by_channel = {(row[2], row[3]): row[4] for row in rows if row[1] == "channel"}
    for channel, channel_figures in expected_channels.items():
        assert int(by_channel[(channel, "opened_unique")]) == channel_figures["opened_unique"]
        assert by_channel[(channel, "revenue")] == channel_figures["revenue"]
    assert by_channel[("sms", "open_rate")] == ""
    holdout = {row[3]: row[4] for row in rows if row[1] == "holdout"}
    for key, value in expected_holdout.items():
        assert float(holdout[key]) == pytest.approx(value), key
    attribution = {row[3]: row[4] for row in rows if row[1] == "attribution"}
    assert attribution == {"conversion_event": "purchase", "model": "linear", "window_days": "7"}

    # PDF
    pdf = teammate.api.get(f"/api/v1/campaigns/{campaign.pk}/report.pdf")
    text = " ".join(page.extract_text() for page in PdfReader(io.BytesIO(pdf.content)).pages)
    text = re.sub(r"\s+", " ", text)
    for phrase in (
        f"Sent {sent}",
        f"Delivered (not bounced) {delivered}",
        "Opened (unique) 3",
        "Conversions 2",
        f"Revenue {revenue} EUR",
        f"Open rate {_pct(expected_rates['open_rate'])}",
        f"Click rate {_pct(expected_rates['click_rate'])}",
        f"Conversion rate {_pct(expected_rates['conversion_rate'])}",
        f"Sent the campaign {people} 2 {_pct(2 / people)}",
        f"Held out {held_people} 1 {_pct(1 / held_people)}",
        "linear attribution",
    ):
        assert phrase in text, phrase
