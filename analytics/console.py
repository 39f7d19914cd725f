"""Console pages: a campaign's report (live totals polled by htmx, charts, breakdowns, holdout comparison; PDF and
CSV downloads) and the organisation overview."""

from __future__ import annotations

from typing import Any

from django.core.exceptions import PermissionDenied, ValidationError
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.utils import timezone
from django.views.decorators.http import require_POST

from analytics import autowinner, experiments, reports
from analytics.models import Notice
from analytics.selectors import organisation_overview, reported_metrics
from audiences.decorators import member_required
from campaigns import selectors as campaign_selectors
from campaigns.models import Campaign

OVERVIEW_SORTS = {
    "name": lambda row: row["campaign"].name.lower(),
    "created": lambda row: row["campaign"].created_at,
    "sent": lambda row: row["counts"]["sent"],
    "delivery_rate": lambda row: row["rates"]["delivery_rate"] or 0,
    "open_rate": lambda row: row["rates"]["open_rate"] or 0,
    "click_rate": lambda row: row["rates"]["click_rate"] or 0,
    "conversion_rate": lambda row: row["rates"]["conversion_rate"] or 0,
    "unsubscribe_rate": lambda row: row["rates"]["unsubscribe_rate"] or 0,
}


OVERVIEW_COLUMNS = [
    ("name", "Campaign"),
    ("created", "Created"),
    ("sent", "Sent"),
    ("delivery_rate", "Delivery"),
    ("open_rate", "Open"),
    ("click_rate", "Click"),
    ("conversion_rate", "Conversion"),
    ("unsubscribe_rate", "Unsubscribe"),
]


def _campaign(request: HttpRequest, campaign_id: Any) -> Campaign:
    try:
        return campaign_selectors.campaign_get(request.actor, campaign_id, include_deleted=True)
    except Campaign.DoesNotExist as exc:
        raise Http404("No such campaign") from exc


@member_required
def campaign_report_view(request: HttpRequest, campaign_id: Any) -> HttpResponse:
    campaign = _campaign(request, campaign_id)
    return render(request, "analytics/report.html", reports.report_context(campaign))


@member_required
def campaign_live_metrics_view(request: HttpRequest, campaign_id: Any) -> HttpResponse:
    """The live tiles of the report (htmx polls this every 2 s)."""
    campaign = _campaign(request, campaign_id)
    return render(request, "analytics/_live.html", {"campaign": campaign, "metrics": reported_metrics(campaign)})


@member_required
def campaign_experiment_view(request: HttpRequest, campaign_id: Any) -> HttpResponse:
    """The report's experiment section for another metric or level (htmx swaps it in place)."""
    campaign = _campaign(request, campaign_id)
    metric = request.GET.get("metric", "click")
    try:
        level = float(request.GET.get("level", "0.95"))
    except ValueError:
        level = 0.95
    if metric not in experiments.METRICS:
        metric = "click"
    if not any(abs(level - v) < 1e-9 for v in experiments.LEVELS):
        level = 0.95
    context = {"campaign": campaign, **experiments.experiment_context(campaign, metric, level)}
    return render(request, "analytics/_experiment.html", context)


@member_required
def campaign_report_pdf_view(request: HttpRequest, campaign_id: Any) -> HttpResponse:
    return reports.report_download(_campaign(request, campaign_id), "pdf")


@member_required
def campaign_report_csv_view(request: HttpRequest, campaign_id: Any) -> HttpResponse:
    return reports.report_download(_campaign(request, campaign_id), "csv")


@member_required
def overview_view(request: HttpRequest) -> HttpResponse:
    sort = request.GET.get("sort", "-created")
    key = sort.lstrip("-")
    if key not in OVERVIEW_SORTS:
        sort, key = "-created", "created"
    rows = sorted(
        organisation_overview(request.actor.organisation), key=OVERVIEW_SORTS[key], reverse=sort.startswith("-")
    )
    context = {
        "rows": rows,
        "sort": sort,
        "columns": OVERVIEW_COLUMNS,
        "notices": autowinner.notices_unread(request.user),
    }
    return render(request, "analytics/overview.html", context)


@member_required
@require_POST
def campaign_auto_winner_view(request: HttpRequest, campaign_id: Any) -> HttpResponse:
    """The report's auto-winner settings form."""
    campaign = _campaign(request, campaign_id)
    try:
        autowinner.auto_winner_settings_update(
            actor=request.actor,
            campaign_id=campaign.pk,
            enabled=request.POST.get("enabled") == "on",
            metric=request.POST.get("metric", "click"),
            level=int(request.POST.get("level") or 95),
            min_sample=int(request.POST.get("min_sample") or 1000),
        )
    except (ValidationError, ValueError, PermissionDenied) as exc:
        from django.contrib import messages

        messages.error(request, f"Auto-winner not saved: {exc}")
    return redirect("analytics:report", campaign_id=campaign.pk)


@member_required
@require_POST
def notice_read_view(request: HttpRequest, notice_id: int) -> HttpResponse:
    Notice.objects.filter(pk=notice_id, user=request.user, read_at__isnull=True).update(read_at=timezone.now())
    return redirect("analytics:overview")
