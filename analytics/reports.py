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
from analytics.selectors import OPEN_CHANNELS, MetricFilter, reported_metrics
from analytics.services import METHODOLOGY
from audiences import segments as engine
from audiences.rules import RuleError
from audiences.segments import wilson_interval
from config.files import save_private

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
    ("conversions_total", "Conversions"),
    ("converted", "Converted (messages' credit)"),
    ("unsubscribed", "Unsubscribed"),
    ("complained", "Complained"),
    ("held_out", "Held out / control (messages)"),
]

SEGMENT_SQL = """
-- Delivered as in the totals (sent and not bounced); opens only on channels that report them; converted is each
-- message's credit in its first conversion, as in the totals.
SELECT count(*) FILTER (WHERE m.status IN ('sent', 'delivered', 'bounced')),
       count(*) FILTER (WHERE m.status IN ('sent', 'delivered')),
       count(*) FILTER (WHERE m.status IN ('sent', 'delivered') AND m.channel = ANY(%s)),
       count(fo.message_id) FILTER (WHERE m.channel = ANY(%s)), count(fc.message_id),
       COALESCE(sum(cv.credit), 0)
FROM delivery_message m
JOIN delivery_run r ON r.id = m.run_id AND r.campaign_id = %s
JOIN audiences_contact ON audiences_contact.id = m.contact_id
LEFT JOIN analytics_messagefirst fo ON fo.message_id = m.id AND fo.kind = 'open'
LEFT JOIN analytics_messagefirst fc ON fc.message_id = m.id AND fc.kind = 'click'
LEFT JOIN LATERAL (
    SELECT COALESCE(e.credit, 1) AS credit FROM analytics_engagementevent e
    WHERE e.campaign_id = r.campaign_id AND e.message_id = m.id AND e.kind = 'conversion'
    ORDER BY e.occurred_at, e.id LIMIT 1
) cv ON true
WHERE m.status NOT IN ('holdout', 'control') AND ({condition})
"""

# The holdout comparison counts people, not messages: a two-channel campaign sends a person two messages (or holds
# out two), and a person converts or not.
HOLDOUT_SQL = """
SELECT (SELECT count(DISTINCT m.contact_id) FROM delivery_message m JOIN delivery_run r ON r.id = m.run_id
        WHERE r.campaign_id = %(campaign)s AND m.status IN ('sent', 'delivered', 'bounced')),
       (SELECT count(DISTINCT m.contact_id) FROM delivery_message m JOIN delivery_run r ON r.id = m.run_id
        WHERE r.campaign_id = %(campaign)s AND m.status = 'holdout'),
       count(DISTINCT e.contact_id) FILTER (WHERE e.classification <> 'holdout'),
       count(DISTINCT e.contact_id) FILTER (WHERE e.classification = 'holdout')
FROM analytics_engagementevent e
WHERE e.campaign_id = %(campaign)s AND e.kind = 'conversion'
"""


# What a campaign without a conversion event reports as "no conversion event" rather than as a figure.
CONVERSION_FIGURES = frozenset(
    {"converted", "conversions_total", "conversion_touches", "held_out_converted", "conversion_rate", "revenue"}
)
SEGMENT_FIGURES = ("sent", "delivered", "opened", "clicked", "converted", "open_rate", "click_rate", "conversion_rate")
HOLDOUT_FIGURES = (
    "treated", "treated_converted", "treated_rate", "held_out", "held_out_converted", "held_out_rate", "lift"
)  # fmt: skip


def _segment_breakdown(campaign: Any) -> list[dict[str, Any]]:
    rows = []
    for link in campaign.segment_links.select_related("segment").filter(role="include"):
        try:
            condition = engine.segment_condition(link.segment)
        except RuleError:
            continue
        openable = sorted(OPEN_CHANNELS)
        with connection.cursor() as cursor:
            cursor.execute(
                SEGMENT_SQL.format(condition=condition.sql),
                [openable, openable, str(campaign.pk), *condition.params],
            )
            sent, delivered, with_opens, opened, clicked, converted = cursor.fetchone()
        converted = round(float(converted), 6) if campaign.conversion_event else None
        rows.append(
            {
                "name": link.segment.name,
                "sent": sent,
                "delivered": delivered,
                "opened": opened,
                "clicked": clicked,
                "converted": converted,
                "open_rate": opened / with_opens if with_opens else None,
                "click_rate": clicked / delivered if delivered else None,
                "conversion_rate": converted / delivered if delivered and converted is not None else None,
            }
        )
    return rows


def _holdout(campaign: Any, metrics: dict[str, Any]) -> dict[str, Any] | None:
    """Conversion of the people sent the campaign against the people held out (distinct contacts, whatever the
    number of channels), with Wilson intervals and the lift."""
    if not metrics["counts"]["held_out_holdout"]:
        return None
    with connection.cursor() as cursor:
        cursor.execute(HOLDOUT_SQL, {"campaign": str(campaign.pk)})
        treated, held, treated_converted, held_converted = cursor.fetchone()
    if not held:
        return None
    if not campaign.conversion_event:
        return {"treated": treated, "held_out": held, "conversion_event": False}
    held_rate = held_converted / held
    treated_rate = treated_converted / treated if treated else None
    return {
        "conversion_event": True,
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
    metrics = reported_metrics(campaign, flt=MetricFilter(), interval=interval or "hour")
    series = metrics["series"]
    if interval is None and len(series) <= 3:
        # A short campaign: minutes show its shape better than two or three hourly points.
        series = reported_metrics(campaign, interval="minute")["series"]
    has_conversions = bool(campaign.conversion_event)
    variants = [v for v in metrics["by_variant"].values() if not v["is_control"]]
    variant_bars = []
    for entry in variants:
        delivered, clicked = entry["counts"]["delivered"], entry["counts"]["clicked_unique"]
        rate = entry["rates"]["click_rate"] or 0.0
        variant_bars.append((entry["name"], rate, wilson_interval(clicked, delivered) if delivered else None))
    context = {
        "campaign": campaign,
        "metrics": metrics,
        "has_conversions": has_conversions,
        "attribution": metrics["attribution"],
        "currency": metrics["currency"],
        "counts": [(key, label, metrics["counts"][key]) for key, label in COUNT_LABELS],
        "rates": [(key, label, metrics["rates"][key]) for key, label in RATE_LABELS],
        "series": series,
        "over_time_chart": charts.line_chart(
            series,
            [("sent", "Sent"), ("opened", "Opened"), ("clicked", "Clicked")]
            + ([("converted", "Converted")] if has_conversions else []),
            title="Over time (UTC)",
        ),
        "variant_chart": charts.bar_chart(variant_bars, title="Click rate by variant (95 % Wilson interval)"),
        "segments": _segment_breakdown(campaign),
        "holdout": _holdout(campaign, metrics),
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
        return stored_attachment(campaign, report_pdf(campaign), f"campaign-{campaign.pk}-report.pdf")
    return stored_attachment(campaign, report_csv(campaign).encode(), f"campaign-{campaign.pk}-report.csv")


def stored_attachment(campaign: Any, content: bytes, filename: str) -> HttpResponse:
    """A generated report file as an attachment, also stored in the private store (config.files), where it replaces
    the campaign's previous one of that name; Content-Location gives client apps an expiring URL to it."""
    content_type = "application/pdf" if filename.endswith(".pdf") else "text/csv; charset=utf-8"
    response = HttpResponse(content, content_type=content_type)
    response["Content-Disposition"] = f'attachment; filename="{filename}"'
    response["Content-Location"] = save_private(f"reports/{campaign.organisation_id}/{filename}", content)
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
    writer.writerow(["campaign", "section", "breakdown", "metric", "value", "unit"])
    name = _cell(campaign.name)
    no_event = "no conversion event"

    def value_of(key: str, value: Any) -> Any:
        return no_event if value is None and key in CONVERSION_FIGURES and not context["has_conversions"] else value

    def rows(section: str, breakdown: str, entry: dict[str, Any]) -> None:
        for key, value in entry["counts"].items():
            writer.writerow([name, section, _cell(breakdown), key, value_of(key, value), ""])
        for key, value in entry["rates"].items():
            value = value_of(key, value)
            writer.writerow([name, section, _cell(breakdown), key, "" if value is None else value, "ratio"])
        revenue = value_of("revenue", entry["revenue"])
        writer.writerow([name, section, _cell(breakdown), "revenue", revenue, context["currency"]])

    attribution = context["attribution"]
    writer.writerow([name, "attribution", "", "conversion_event", attribution["conversion_event"] or no_event, ""])
    writer.writerow([name, "attribution", "", "model", attribution["model"], ""])
    writer.writerow([name, "attribution", "", "window_days", attribution["window_days"], "days"])
    rows("total", "", metrics)
    for channel, entry in metrics["by_channel"].items():
        rows("channel", channel, entry)
    for entry in metrics["by_variant"].values():
        rows("variant", entry["name"], entry)
    for run_id, entry in metrics["by_run"].items():
        rows("run", run_id, entry)
    for segment in context["segments"]:
        for key in SEGMENT_FIGURES:
            value = value_of(key, segment[key])
            unit = "ratio" if key.endswith("_rate") else ""
            writer.writerow([name, "segment", _cell(segment["name"]), key, "" if value is None else value, unit])
    holdout = context["holdout"]
    if holdout:
        for key in HOLDOUT_FIGURES:
            if key in holdout:
                value = holdout[key]
                writer.writerow([name, "holdout", "", key, "" if value is None else value, ""])
    for point in context["series"]:
        for key, value in point.items():
            if key != "at":
                writer.writerow([name, "over_time", point["at"], key, value_of(key, value), ""])
    return out.getvalue()
