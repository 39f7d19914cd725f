from __future__ import annotations

from typing import Any

from django.db.models import QuerySet
from drf_spectacular.utils import OpenApiParameter, extend_schema, extend_schema_field, extend_schema_view
from rest_framework import mixins, serializers, viewsets

from delivery.models import Run
from delivery.selectors import run_list, run_progress


class RunProgressSerializer(serializers.Serializer):
    total = serializers.IntegerField()
    queued = serializers.IntegerField()
    sending = serializers.IntegerField()
    sent = serializers.IntegerField(help_text="Handed to the provider (includes delivered and bounced).")
    delivered = serializers.IntegerField()
    bounced = serializers.IntegerField()
    failed = serializers.IntegerField()
    skipped = serializers.IntegerField(help_text="Left out at send time: opted out, unsubscribed, suppressed…")
    cancelled = serializers.IntegerField()
    percent = serializers.FloatField()


class RunSerializer(serializers.ModelSerializer):
    campaign = serializers.UUIDField(source="campaign_id", read_only=True)
    progress = serializers.SerializerMethodField()

    class Meta:
        model = Run
        fields = [
            "id",
            "campaign",
            "number",
            "status",
            "status_reason",
            "trigger",
            "scheduled_for",
            "audience_count",
            "holdout_count",
            "control_count",
            "message_count",
            "excluded",
            "progress",
            "created_at",
            "fanned_out_at",
            "started_sending_at",
            "paused_at",
            "paused_by",
            "finished_at",
        ]
        read_only_fields = fields

    @extend_schema_field(RunProgressSerializer)
    def get_progress(self, run: Run) -> dict[str, Any]:
        return run_progress(run)


@extend_schema_view(
    list=extend_schema(parameters=[OpenApiParameter("campaign", str, description="Only this campaign's runs.")])
)
class RunViewSet(mixins.ListModelMixin, mixins.RetrieveModelMixin, viewsets.GenericViewSet):
    """Executions of the organisation's campaigns with their audience snapshot and live progress."""

    serializer_class = RunSerializer
    lookup_value_regex = r"[0-9a-fA-F-]{36}"

    def get_queryset(self) -> QuerySet[Run]:
        if getattr(self, "swagger_fake_view", False):
            return Run.objects.none()
        campaign = self.kwargs.get("campaign_pk") or self.request.query_params.get("campaign")
        if campaign is not None:
            serializers.UUIDField().run_validation(campaign)
        return run_list(self.request.actor, campaign_id=campaign)
