"""Campaign reports: one context feeds the page, the PDF (WeasyPrint) and the CSV, so they always agree.

Totals and breakdowns come from the metric deltas (analytics.selectors); the segment breakdown and the holdout
comparison are computed when the report is asked for (the segment one by joining the campaign's messages to each
included segment's current members, which the report says)."""

from __future__ import annotations

import csv
import io
from typing import Any

from django.db import connection
from django.http import HttpResponse
from django.template.loader import render_to_string
from django.utils import timezone

from analytics import charts
from analytics.experiments import experiment_context
from analytics.selectors import MetricFilter, campaign_metrics
from analytics.services import METHODOLOGY
from audiences import segments as engine
from audiences.rules import RuleError
from audiences.segments import wilson_interval

RATE_LABELS = [
    ("delivery_rate", "Delivery rate"),
    ("open_rate", "Open rate"),
    ("human_open_rate", "Open rate (people)"),
    ("click_rate", "Click rate"),
    ("human_click_rate", "Click rate (people)"),
    ("click_to_open_rate", "Click-to-open rate"),
    ("conversion_rate", "Conversion rate"),
    ("unsubscribe_rate", "Unsubscribe rate"),
    ("bounce_rate", "Bounce rate"),
    ("complaint_rate", "Complaint rate"),
]
COUNT_LABELS = [
    ("queued", "Queued"),
    ("sent", "Sent"),
    ("delivered", "Delivered (not bounced)"),
    ("delivery_confirmed", "Delivery confirmed by receipt"),
    ("bounced", "Bounced"),
    ("failed", "Failed"),
    ("opened_unique", "Opened (unique)"),
    ("opened_total", "Opens (total)"),
    ("opened_human_unique", "Opened by people (unique)"),
    ("clicked_unique", "Clicked (unique)"),
    ("clicked_total", "Clicks (total)"),
    ("clicked_human_unique", "Clicked by people (unique)"),
    ("converted", "Converted"),
    ("unsubscribed", "Unsubscribed"),
    ("complained", "Complained"),
    ("held_out", "Held out / control"),
]

SEGMENT_SQL = """
SELECT count(*) FILTER (WHERE m.status IN ('sent', 'delivered', 'bounced')),
       count(*) FILTER (WHERE m.status = 'delivered'),
       count(fo.message_id), count(fc.message_id), count(fv.message_id)
FROM delivery_message m
JOIN delivery_run r ON r.id = m.run_id AND r.campaign_id = %s
JOIN audiences_contact ON audiences_contact.id = m.contact_id
LEFT JOIN analytics_messagefirst fo ON fo.message_id = m.id AND fo.kind = 'open'
LEFT JOIN analytics_messagefirst fc ON fc.message_id = m.id AND fc.kind = 'click'
LEFT JOIN analytics_messagefirst fv ON fv.message_id = m.id AND fv.kind = 'conversion'
WHERE m.status NOT IN ('holdout', 'control') AND ({condition})
"""


def _segment_breakdown(campaign: Any) -> list[dict[str, Any]]:
    rows = []
    for link in campaign.segment_links.select_related("segment").filter(role="include"):
        try:
            condition = engine.segment_condition(link.segment)
        except RuleError:
            continue
        with connection.cursor() as cursor:
            cursor.execute(SEGMENT_SQL.format(condition=condition.sql), [str(campaign.pk), *condition.params])
            sent, delivered, opened, clicked, converted = cursor.fetchone()
        base = delivered or sent
        rows.append(
            {
                "name": link.segment.name,
                "sent": sent,
                "delivered": delivered,
                "opened": opened,
                "clicked": clicked,
                "converted": converted,
                "open_rate": opened / base if base else None,
                "click_rate": clicked / base if base else None,
                "conversion_rate": converted / base if base else None,
            }
        )
    return rows


def _holdout(metrics: dict[str, Any]) -> dict[str, Any] | None:
    """Conversion of the recipients sent the campaign against the held-out ones, from the metric deltas."""
    held, held_converted = metrics["counts"]["held_out_holdout"], metrics["counts"]["held_out_converted"]
    if not held:
        return None
    treated, treated_converted = metrics["counts"]["sent"], metrics["counts"]["converted"]
    held_rate = held_converted / held
    treated_rate = treated_converted / treated if treated else None
    return {
        "held_out": held,
        "held_out_converted": held_converted,
        "held_out_rate": held_rate,
        "held_out_interval": wilson_interval(held_converted, held),
        "treated": treated,
        "treated_converted": treated_converted,
        "treated_rate": treated_rate,
        "treated_interval": wilson_interval(treated_converted, treated) if treated else None,
        "lift": (treated_rate - held_rate) / held_rate if treated_rate is not None and held_rate else None,
    }


def report_context(campaign: Any, *, interval: str | None = None) -> dict[str, Any]:
    metrics = campaign_metrics(campaign, flt=MetricFilter(), interval=interval or "hour")
    series = metrics["series"]
    if interval is None and len(series) <= 3:
        # A short campaign: minutes show its shape better than two or three hourly points.
        series = campaign_metrics(campaign, interval="minute")["series"]
    variants = [v for v in metrics["by_variant"].values() if not v["is_control"]]
    variant_bars = []
    for entry in variants:
        delivered, clicked = entry["counts"]["delivered"], entry["counts"]["clicked_unique"]
        rate = entry["rates"]["click_rate"] or 0.0
        variant_bars.append((entry["name"], rate, wilson_interval(clicked, delivered) if delivered else None))
    context = {
        "campaign": campaign,
        "metrics": metrics,
        "counts": [(label, metrics["counts"][key]) for key, label in COUNT_LABELS],
        "rates": [(label, metrics["rates"][key]) for key, label in RATE_LABELS],
        "series": series,
        "over_time_chart": charts.line_chart(
            series,
            [("sent", "Sent"), ("opened", "Opened"), ("clicked", "Clicked"), ("converted", "Converted")],
            title="Over time (UTC)",
        ),
        "variant_chart": charts.bar_chart(variant_bars, title="Click rate by variant (95 % Wilson interval)"),
        "segments": _segment_breakdown(campaign),
        "holdout": _holdout(metrics),
        **experiment_context(campaign),
        "methodology": METHODOLOGY,
        "generated_at": timezone.now(),
    }
    return context


def report_pdf(campaign: Any) -> bytes:
    from weasyprint import HTML

    html = render_to_string("analytics/report_pdf.html", report_context(campaign))
    # No base_url: the document has no external resources to fetch (charts are inline SVG).
    return HTML(string=html).write_pdf()


def report_download(campaign: Any, kind: str) -> HttpResponse:
    """The report as an attachment: kind "pdf" or "csv" (the console and the API serve the same files)."""
    if kind == "pdf":
        response = HttpResponse(report_pdf(campaign), content_type="application/pdf")
    else:
        response = HttpResponse(report_csv(campaign), content_type="text/csv; charset=utf-8")
    response["Content-Disposition"] = f'attachment; filename="campaign-{campaign.pk}-report.{kind}"'
    return response


def _cell(value: Any) -> str:
    """Spreadsheets run cells that start with = + - @ (or tab / CR) as formulas: quote them (OWASP CSV injection)."""
    text = "" if value is None else str(value)
    return "'" + text if text[:1] in ("=", "+", "-", "@", "\t", "\r") else text


def report_csv(campaign: Any) -> str:
    context = report_context(campaign)
    metrics = context["metrics"]
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(["campaign", "section", "breakdown", "metric", "value"])

    def rows(section: str, breakdown: str, entry: dict[str, Any]) -> None:
        for key, value in entry["counts"].items():
            writer.writerow([_cell(campaign.name), section, _cell(breakdown), key, value])
        for key, value in entry["rates"].items():
            writer.writerow([_cell(campaign.name), section, _cell(breakdown), key, "" if value is None else value])
        writer.writerow([_cell(campaign.name), section, _cell(breakdown), "revenue", entry["revenue"]])

    rows("total", "", metrics)
    for channel, entry in metrics["by_channel"].items():
        rows("channel", channel, entry)
    for entry in metrics["by_variant"].values():
        rows("variant", entry["name"], entry)
    for run_id, entry in metrics["by_run"].items():
        rows("run", run_id, entry)
    for segment in context["segments"]:
        for key in ("sent", "delivered", "opened", "clicked", "converted", "open_rate", "click_rate"):
            writer.writerow([_cell(campaign.name), "segment", _cell(segment["name"]), key, segment[key]])
    for point in context["series"]:
        for key, value in point.items():
            if key != "at":
                writer.writerow([_cell(campaign.name), "over_time", point["at"], key, value])
    return out.getvalue()
