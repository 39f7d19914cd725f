"""Reports: the campaign report page with its SVG charts, the PDF (its text read back), the CSV (content and formula
safety), the organisation overview, and scoping of every one of them."""

from __future__ import annotations

import csv
import io
import time
from datetime import timedelta

import pytest
from django.utils import timezone

from analytics import reports, services
from analytics.charts import bar_chart, line_chart
from audiences.services import segment_create
from delivery.models import Message
from tests.factories import console_client
from tests.test_analytics_metrics import _scripted_run

pytestmark = pytest.mark.django_db


def _engage(run):
    messages = list(Message.objects.filter(run=run).order_by("id"))
    now = timezone.now()
    services.engagement_record_many(
        [{"message_id": m.pk, "kind": "open", "at": now, "dedupe": f"o{m.pk}"} for m in messages[:8]]
        + [{"message_id": m.pk, "kind": "click", "at": now, "dedupe": f"c{m.pk}"} for m in messages[:3]]
    )


def test_report_page_shows_totals_charts_and_breakdowns(teammate, django_capture_on_commit_callbacks):
    campaign, run = _scripted_run(teammate, django_capture_on_commit_callbacks)
    _engage(run)
    page = console_client(teammate).get(f"/analytics/campaigns/{campaign.pk}/")
    assert page.status_code == 200
    html = page.content.decode()
    assert html.count("<svg") == 2  # over time, and by variant
    assert 'data-metric="opened_unique">8<' in html and 'data-metric="clicked_unique">3<' in html
    assert "40.0 %" in html  # open rate 8/20
    assert 'data-testid="by-variant"' in html and 'data-testid="by-channel"' in html
    assert "Mail Privacy Protection" in html  # how machine opens are classified
    live = console_client(teammate).get(f"/analytics/campaigns/{campaign.pk}/live/")
    assert live.status_code == 200 and 'hx-trigger="every 2s"' in live.content.decode()
    assert "Last updated" in live.content.decode()


def test_segment_breakdown_and_holdout_absent_when_not_used(teammate, django_capture_on_commit_callbacks):
    from campaigns.models import CampaignSegment

    campaign, run = _scripted_run(teammate, django_capture_on_commit_callbacks)
    _engage(run)
    first_ten = segment_create(
        actor=teammate.actor,
        data={
            "name": "First ten",
            "rules": {"field": "external_id", "op": "in", "value": [f"m{i}" for i in range(10)]},
        },
    )
    CampaignSegment.objects.create(campaign=campaign, segment=first_ten, role="include")
    context = reports.report_context(campaign)
    assert context["holdout"] is None
    (row,) = context["segments"]
    opened_in_segment = Message.objects.filter(
        run=run,
        contact__external_id__in=[f"m{i}" for i in range(10)],
        pk__in=[m.pk for m in Message.objects.filter(run=run).order_by("id")[:8]],
    ).count()
    assert (row["name"], row["sent"], row["opened"]) == ("First ten", 10, opened_in_segment)


def test_pdf_report_reads_like_the_page(teammate, django_capture_on_commit_callbacks):
    from pypdf import PdfReader

    campaign, run = _scripted_run(teammate, django_capture_on_commit_callbacks)
    _engage(run)
    started = time.monotonic()
    response = console_client(teammate).get(f"/analytics/campaigns/{campaign.pk}/report.pdf")
    elapsed = time.monotonic() - started
    assert response.status_code == 200 and response["Content-Type"] == "application/pdf"
    assert response.content.startswith(b"%PDF")
    text = " ".join(page.extract_text() for page in PdfReader(io.BytesIO(response.content)).pages)
    assert f"Campaign report: {campaign.name}" in text
    for phrase in ("Open rate", "40.0 %", "Click rate", "15.0 %", "By variant", "Over time", "Page 1 of"):
        assert phrase in text, phrase
    assert elapsed < 30  # generous here; the figure that counts is in docs/benchmarks.md
    api = teammate.api.get(f"/api/v1/campaigns/{campaign.pk}/report.pdf")
    assert api.status_code == 200 and api.content.startswith(b"%PDF")


def test_csv_report_content_and_formula_safety(teammate, django_capture_on_commit_callbacks):
    campaign, run = _scripted_run(teammate, django_capture_on_commit_callbacks)
    campaign.name = '=HYPERLINK("http://evil.example","x")'
    campaign.save(update_fields=["name"])
    _engage(run)
    response = teammate.api.get(f"/api/v1/campaigns/{campaign.pk}/report.csv")
    assert response.status_code == 200 and response["Content-Type"].startswith("text/csv")
    rows = list(csv.reader(io.StringIO(response.content.decode())))
    assert rows[0] == ["campaign", "section", "breakdown", "metric", "value", "unit"]
    assert all(row[0] == "'" + campaign.name for row in rows[1:])  # quoted: a spreadsheet shows it as text
    totals = {row[3]: row[4] for row in rows if row[1] == "total"}
    assert totals["sent"] == "20" and totals["opened_unique"] == "8" and totals["clicked_unique"] == "3"
    assert float(totals["open_rate"]) == pytest.approx(0.4)
    variants = {(row[2], row[3]): row[4] for row in rows if row[1] == "variant"}
    assert int(variants[("A", "sent")]) + int(variants[("B", "sent")]) == 20
    assert any(row[1] == "over_time" for row in rows)
    console = console_client(teammate).get(f"/analytics/campaigns/{campaign.pk}/report.csv")
    assert console.status_code == 200 and console.content == response.content


def test_reports_are_scoped_to_the_organisation(teammate, outsider, django_capture_on_commit_callbacks):
    campaign, _run = _scripted_run(teammate, django_capture_on_commit_callbacks, contacts=2)
    browser = console_client(outsider)
    for path in ("", "live/", "report.pdf", "report.csv"):
        assert browser.get(f"/analytics/campaigns/{campaign.pk}/{path}").status_code == 404, path
    for path in ("metrics/", "report.pdf", "report.csv"):
        assert outsider.api.get(f"/api/v1/campaigns/{campaign.pk}/{path}").status_code == 404, path
    assert campaign.name not in browser.get("/analytics/").content.decode()


def test_overview_lists_recent_campaigns_sortable(teammate, django_capture_on_commit_callbacks):
    campaign, run = _scripted_run(teammate, django_capture_on_commit_callbacks, contacts=4)
    _engage(run)
    client = console_client(teammate)
    html = client.get("/analytics/").content.decode()
    assert campaign.name in html and "100.0 %" in html  # 4 of 4 opened
    for sort in ("name", "-sent", "open_rate", "-click_rate", "bogus"):
        assert client.get("/analytics/", {"sort": sort}).status_code == 200


def test_charts_are_escaped_svg():
    points = [
        {"at": (timezone.now() - timedelta(minutes=2 - i)).isoformat(), "sent": 10 * i, "opened": i} for i in range(3)
    ]
    svg = line_chart(points, [("sent", "Sent <b>"), ("opened", "Opened")], title="T & <x>")
    assert svg.startswith("<svg") and "<b>" not in svg and "T &amp; &lt;x&gt;" in svg
    assert svg.count("<polyline") == 2
    assert "No data yet" in line_chart([], [("sent", "Sent")])
    bars = bar_chart([("A", 0.12, (0.1, 0.14)), ("<B>", 0.2, None)], title="Rates")
    assert "&lt;B&gt;" in bars and "12.0%" in bars and "20.0%" in bars
