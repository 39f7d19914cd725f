"""Reports that mean what they say: a campaign without a conversion event shows no conversions or revenue (even when
a provider recorded some) and says so; the experiment CSV of a single-variant campaign is a file, not an error;
the organisation's currency (ISO 4217, set in the console or the API) is on every amount; SMS "opens" are no
opens; the charts are as wide as their card."""

from __future__ import annotations

import csv
import io
import re

import pytest
from django.utils import timezone
from pypdf import PdfReader

from analytics import services
from compliance.models import AuditLogEntry
from delivery.models import Message
from tests.factories import console_client
from tests.test_analytics_metrics import _scripted_run

pytestmark = pytest.mark.django_db


def _provider_conversion(run) -> None:
    """A purchase as a provider's simulated engagement records it (the sandbox does), with a value."""
    message = Message.objects.filter(run=run).order_by("id").first()
    services.engagement_record_many(
        [{"message_id": message.pk, "kind": "conversion", "at": timezone.now(), "value": 40, "dedupe": "sim-1"}]
    )


def test_no_conversion_event_means_no_conversions_anywhere(teammate, django_capture_on_commit_callbacks):
    campaign, run = _scripted_run(teammate, django_capture_on_commit_callbacks, contacts=4)
    assert campaign.conversion_event == ""
    _provider_conversion(run)

    api = teammate.api.get(f"/api/v1/campaigns/{campaign.pk}/metrics/").json()
    assert (api["counts"]["converted"], api["counts"]["conversions_total"], api["revenue"]) == (None, None, None)
    assert api["rates"]["conversion_rate"] is None and api["attribution"]["conversion_event"] is None
    assert all(entry["revenue"] is None for entry in api["by_variant"].values())
    overview = teammate.api.get("/api/v1/analytics/overview/").json()["results"]
    assert [(row["revenue"], row["counts"]["converted"]) for row in overview] == [(None, None)]

    html = console_client(teammate).get(f"/analytics/campaigns/{campaign.pk}/").content.decode()
    for metric in ("conversions_total", "converted", "revenue", "conversion_rate"):
        row = re.search(rf'<tr data-metric="{metric}">(.*?)</tr>', html).group(1)
        assert "no conversion event" in row, metric
    assert "40.00" not in html and "USD" not in html  # no amount anywhere, revenue per recipient included
    live = console_client(teammate).get(f"/analytics/campaigns/{campaign.pk}/live/").content.decode()
    assert "no conversion event" in live and "40.00" not in live

    rows = list(
        csv.reader(io.StringIO(teammate.api.get(f"/api/v1/campaigns/{campaign.pk}/report.csv").content.decode()))
    )
    total = {row[3]: row[4] for row in rows if row[1] == "total"}
    assert (total["converted"], total["revenue"], total["conversion_rate"]) == ("no conversion event",) * 3
    attribution = {row[3]: row[4] for row in rows if row[1] == "attribution"}
    assert attribution["conversion_event"] == "no conversion event"

    pdf = teammate.api.get(f"/api/v1/campaigns/{campaign.pk}/report.pdf").content
    text = re.sub(r"\s+", " ", " ".join(p.extract_text() for p in PdfReader(io.BytesIO(pdf)).pages))
    assert "Revenue no conversion event" in text and "40.00" not in text


def test_the_experiment_csv_of_a_single_variant_campaign(teammate, django_capture_on_commit_callbacks):
    from tests.factories import CampaignFactory

    campaign, _run = _scripted_run(teammate, django_capture_on_commit_callbacks, contacts=2)
    single = CampaignFactory(organisation=teammate.organisation, name="Only one")  # variant A at 100 %
    for target in (single, campaign):
        response = teammate.api.get(f"/api/v1/campaigns/{target.pk}/experiment.csv")
        assert response.status_code == 200, target.name
    rows = list(
        csv.reader(io.StringIO(teammate.api.get(f"/api/v1/campaigns/{single.pk}/experiment.csv").content.decode()))
    )
    header, variant = rows[0], rows[1]
    assert dict(zip(header, variant, strict=False))["variant"] == "A"
    assert dict(zip(header, variant, strict=False))["winner"] == "False"
    assert ["warning", "", "", "Fewer than two variants to compare."] in rows


def test_the_organisations_currency_is_on_every_amount(owner, teammate, django_capture_on_commit_callbacks):
    assert teammate.api.get("/api/v1/organisation/").json()["currency"] == "USD"
    for bad in ("XYZ", "eur", "EURO", ""):
        response = owner.api.patch("/api/v1/organisation/", {"currency": bad}, format="json")
        assert response.status_code == 400 and "currency" in response.json(), bad
    assert teammate.api.patch("/api/v1/organisation/", {"currency": "EUR"}, format="json").status_code == 403
    assert owner.api.patch("/api/v1/organisation/", {"currency": "EUR"}, format="json").json()["currency"] == "EUR"
    entry = AuditLogEntry.objects.filter(action="organisation.update").latest("id")
    assert entry.details["currency"] == {"from": "USD", "to": "EUR"}

    browser = console_client(owner)
    assert 'name="currency"' in browser.get("/settings/organisation/").content.decode()
    form = {"name": "Acme", "timezone": "Europe/London", "currency": "GBP", "sender_email": "news@acme.example"}
    assert browser.post("/settings/organisation/", form).status_code == 302
    assert browser.post("/settings/organisation/", {**form, "currency": "ZZZ"}).status_code == 400
    owner.organisation.refresh_from_db()
    assert owner.organisation.currency == "GBP"

    campaign, run = _scripted_run(teammate, django_capture_on_commit_callbacks, contacts=2, conversion_event="purchase")
    message = Message.objects.filter(run=run).select_related("contact").first()
    event = {"id": "o-1", "type": "purchase", "contact": message.contact.external_id,
             "properties": {"value": "1234.5"}}  # fmt: skip
    assert teammate.api.post("/api/v1/events/", event, format="json").status_code == 202
    api = teammate.api.get(f"/api/v1/campaigns/{campaign.pk}/metrics/").json()
    assert (api["revenue"], api["currency"]) == ("1234.50", "GBP")
    html = console_client(teammate).get(f"/analytics/campaigns/{campaign.pk}/").content.decode()
    assert re.search(r'<tr data-metric="revenue">.*?1,234.50 GBP', html)
    assert html.count("GBP") >= 3  # totals, the variant's revenue, the live tile
    rows = list(
        csv.reader(io.StringIO(teammate.api.get(f"/api/v1/campaigns/{campaign.pk}/report.csv").content.decode()))
    )
    assert all(row[5] == "GBP" for row in rows if row[3] == "revenue")


def test_sms_opens_are_no_opens_and_charts_fill_their_card(teammate, django_capture_on_commit_callbacks):
    from analytics.selectors import campaign_metrics

    campaign, run = _scripted_run(teammate, django_capture_on_commit_callbacks, contacts=4)
    messages = list(Message.objects.filter(run=run).order_by("id"))
    Message.objects.filter(pk=messages[0].pk).update(channel="sms")  # as if the campaign had sent it by SMS
    now = timezone.now()
    services.engagement_record_many(
        [{"message_id": m.pk, "kind": "open", "at": now, "dedupe": f"o-{m.pk}"} for m in messages[:2]]
    )
    metrics = campaign_metrics(campaign)
    # One email open of the three emails delivered; the SMS "open" counts nowhere.
    assert metrics["counts"]["opened_unique"] == 1 and metrics["rates"]["open_rate"] == pytest.approx(1 / 3)
    assert metrics["by_channel"]["sms"]["rates"]["open_rate"] is None
    html = console_client(teammate).get(f"/analytics/campaigns/{campaign.pk}/").content.decode()
    charts = re.findall(r"<svg [^>]*>", html)
    assert len(charts) == 2
    assert all('width="100%"' in svg and "height=" not in svg.replace("height:auto", "") for svg in charts)
