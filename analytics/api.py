"""Metrics and reports over the API: GET /api/v1/campaigns/{id}/metrics/ (+ report.pdf / report.csv) and
GET /api/v1/analytics/overview/. Organisation-scoped like everything else: another organisation's campaign is a 404."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from django.http import Http404, HttpResponse
from django.utils.dateparse import parse_datetime
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import serializers
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from analytics import autowinner, experiments, reports
from analytics.models import ExperimentDecision
from analytics.selectors import INTERVALS, MetricFilter, organisation_overview, reported_metrics
from campaigns.models import Campaign, Channel
from campaigns.selectors import campaign_get


def _campaign(request: Request, campaign_pk: Any) -> Campaign:
    try:
        return campaign_get(request.actor, campaign_pk, include_deleted=True)
    except Campaign.DoesNotExist as exc:
        raise Http404 from exc


class MetricQuerySerializer(serializers.Serializer):
    run = serializers.UUIDField(required=False)
    variant = serializers.UUIDField(required=False)
    channel = serializers.ChoiceField(choices=Channel.choices, required=False)
    interval = serializers.ChoiceField(choices=list(INTERVALS), required=False)
    since = serializers.CharField(required=False, help_text="ISO 8601, with an offset.")
    until = serializers.CharField(required=False, help_text="ISO 8601, with an offset.")

    def _moment(self, value: str, field: str) -> datetime:
        moment = parse_datetime(value)
        if moment is None or moment.tzinfo is None:
            raise serializers.ValidationError(
                {field: ["An ISO 8601 date-time with an offset, e.g. 2026-12-01T09:00Z."]}
            )
        return moment

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        for field in ("since", "until"):
            if field in attrs:
                attrs[field] = self._moment(attrs[field], field)
        if attrs.get("since") and attrs.get("until") and attrs["since"] >= attrs["until"]:
            raise serializers.ValidationError({"until": ["Must be after since."]})
        return attrs


METRIC_PARAMETERS = [
    OpenApiParameter("run", OpenApiTypes.UUID, description="One run only."),
    OpenApiParameter("variant", OpenApiTypes.UUID, description="One variant only."),
    OpenApiParameter("channel", OpenApiTypes.STR, enum=[c for c, _ in Channel.choices]),
    OpenApiParameter("interval", OpenApiTypes.STR, enum=list(INTERVALS), description="Adds a series over time."),
    OpenApiParameter("since", OpenApiTypes.DATETIME),
    OpenApiParameter("until", OpenApiTypes.DATETIME),
]


class CampaignMetricsView(APIView):
    """Counts, rates (delivery, open, click, click-to-open, conversion, unsubscribe, bounce, complaint; human-only
    open and click rates beside the totals), breakdowns by channel, variant and run, a series over time with
    `interval`, `last_updated` and a delivery-rate `alert`. Opens count on email and in-app only (their rate is
    over what those channels delivered). Conversions are sums of attribution credit, one per conversion event
    (`attribution` says which event, window and model); `revenue` is in `currency` (ISO 4217). Without a
    conversion event, the conversion figures and revenue are null. Live: a change shows here in the same
    transaction that records it."""

    @extend_schema(parameters=METRIC_PARAMETERS, responses={200: OpenApiTypes.OBJECT})
    def get(self, request: Request, campaign_pk: Any) -> Response:
        campaign = _campaign(request, campaign_pk)
        query = MetricQuerySerializer(data=request.query_params)
        query.is_valid(raise_exception=True)
        data = query.validated_data
        flt = MetricFilter(
            run_id=data.get("run"),
            variant_id=data.get("variant"),
            channel=data.get("channel"),
            since=data.get("since"),
            until=data.get("until"),
        )
        metrics = reported_metrics(campaign, flt=flt, interval=data.get("interval"))
        return Response({"campaign": str(campaign.pk), **metrics})


class CampaignReportPdfView(APIView):
    """The campaign report as a PDF document (totals, chart over time, breakdowns, holdout comparison)."""

    @extend_schema(responses={(200, "application/pdf"): OpenApiTypes.BINARY})
    def get(self, request: Request, campaign_pk: Any) -> HttpResponse:
        return reports.report_download(_campaign(request, campaign_pk), "pdf")


class CampaignReportCsvView(APIView):
    """The campaign report as CSV (one row per section, breakdown and metric), safe against formula injection."""

    @extend_schema(responses={(200, "text/csv"): OpenApiTypes.STR})
    def get(self, request: Request, campaign_pk: Any) -> HttpResponse:
        return reports.report_download(_campaign(request, campaign_pk), "csv")


class ExperimentQuerySerializer(serializers.Serializer):
    metric = serializers.ChoiceField(choices=list(experiments.METRICS), required=False, default="click")
    level = serializers.ChoiceField(choices=["0.90", "0.95", "0.99"], required=False, default="0.95")

    def validate_level(self, value: str) -> float:
        return float(value)


EXPERIMENT_PARAMETERS = [
    OpenApiParameter(
        "metric", OpenApiTypes.STR, enum=list(experiments.METRICS), description="Open and click count people only."
    ),
    OpenApiParameter("level", OpenApiTypes.STR, enum=["0.90", "0.95", "0.99"], description="Confidence level."),
]


def _experiment_query(request: Request) -> tuple[str, float]:
    # ChoiceField compares strings: accept 0.9 for 0.90.
    params = request.query_params.copy()
    if params.get("level") == "0.9":
        params["level"] = "0.90"
    query = ExperimentQuerySerializer(data=params)
    query.is_valid(raise_exception=True)
    return query.validated_data["metric"], query.validated_data["level"]


class CampaignExperimentView(APIView):
    """The A/B comparison of the campaign's variants for one metric: rate and Wilson interval per variant, the
    difference to the baseline (Newcombe interval, Holm-adjusted p-value), the chi-square test across variants, the
    sample-ratio check, revenue per recipient (Welch), and the winner when significant at `level`."""

    @extend_schema(parameters=EXPERIMENT_PARAMETERS, responses={200: OpenApiTypes.OBJECT})
    def get(self, request: Request, campaign_pk: Any) -> Response:
        campaign = _campaign(request, campaign_pk)
        metric, level = _experiment_query(request)
        return Response(experiments.experiment_comparison(campaign, metric, level))


class CampaignExperimentCsvView(APIView):
    """The A/B comparison as CSV (one row per variant, then the tests), safe against formula injection."""

    @extend_schema(parameters=EXPERIMENT_PARAMETERS, responses={(200, "text/csv"): OpenApiTypes.STR})
    def get(self, request: Request, campaign_pk: Any) -> HttpResponse:
        campaign = _campaign(request, campaign_pk)
        metric, level = _experiment_query(request)
        content = experiments.experiment_csv(campaign, metric, level).encode()
        return reports.stored_attachment(campaign, content, f"campaign-{campaign.pk}-experiment.csv")


class CampaignExperimentPdfView(APIView):
    """The A/B comparison as a PDF document."""

    @extend_schema(parameters=EXPERIMENT_PARAMETERS, responses={(200, "application/pdf"): OpenApiTypes.BINARY})
    def get(self, request: Request, campaign_pk: Any) -> HttpResponse:
        campaign = _campaign(request, campaign_pk)
        metric, level = _experiment_query(request)
        content = experiments.experiment_pdf(campaign, metric, level)
        return reports.stored_attachment(campaign, content, f"campaign-{campaign.pk}-experiment.pdf")


class AutoWinnerSerializer(serializers.Serializer):
    enabled = serializers.BooleanField(required=False)
    metric = serializers.CharField(required=False, help_text="open, click or conversion (click is the default).")
    level = serializers.IntegerField(required=False, help_text="90, 95 or 99.")
    min_sample = serializers.IntegerField(required=False, help_text="Delivered per variant before deciding (>= 100).")


def auto_winner_data(campaign: Campaign) -> dict[str, Any]:
    decision = ExperimentDecision.objects.filter(campaign=campaign).first()
    return {
        "enabled": campaign.auto_winner_enabled,
        "metric": campaign.auto_winner_metric,
        "level": campaign.auto_winner_level,
        "min_sample": campaign.auto_winner_min_sample,
        "decision": None
        if decision is None
        else {
            "winner": str(decision.winner_id),
            "metric": decision.metric,
            "level": float(decision.level),
            "method": decision.method,
            "numbers": decision.numbers,
            "messages_switched": decision.messages_switched,
            "decided_at": decision.decided_at,
        },
        "metric_advice": autowinner.METRIC_WARNING,
    }


class CampaignAutoWinnerView(APIView):
    """The campaign's auto-winner: on/off, target metric, level and minimum sample per variant, and the decision
    once made. Evaluated by celery-beat while the campaign runs, with a sequential test valid under repeated looks."""

    @extend_schema(responses={200: OpenApiTypes.OBJECT})
    def get(self, request: Request, campaign_pk: Any) -> Response:
        return Response(auto_winner_data(_campaign(request, campaign_pk)))

    @extend_schema(request=AutoWinnerSerializer, responses={200: OpenApiTypes.OBJECT})
    def put(self, request: Request, campaign_pk: Any) -> Response:
        campaign = _campaign(request, campaign_pk)
        body = AutoWinnerSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        data = body.validated_data
        campaign = autowinner.auto_winner_settings_update(
            actor=request.actor,
            campaign_id=campaign.pk,
            enabled=data.get("enabled", campaign.auto_winner_enabled),
            metric=data.get("metric", campaign.auto_winner_metric),
            level=data.get("level", campaign.auto_winner_level),
            min_sample=data.get("min_sample", campaign.auto_winner_min_sample),
        )
        return Response(auto_winner_data(campaign))


class OverviewView(APIView):
    """Recent campaigns of the organisation with their key counts and rates."""

    @extend_schema(responses={200: OpenApiTypes.OBJECT})
    def get(self, request: Request) -> Response:
        rows = organisation_overview(request.actor.organisation)
        return Response(
            {
                "results": [
                    {
                        "campaign": str(row["campaign"].pk),
                        "name": row["campaign"].name,
                        "status": row["campaign"].status,
                        "created_at": row["campaign"].created_at,
                        "counts": row["counts"],
                        "rates": row["rates"],
                        "revenue": row["revenue"],
                        "currency": request.actor.organisation.currency,
                    }
                    for row in rows
                ]
            }
        )
