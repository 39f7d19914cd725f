from __future__ import annotations

from django.contrib import admin
from django.http import HttpRequest

from analytics.models import EngagementEvent, ExperimentDecision, MetricDelta, Notice


@admin.register(EngagementEvent)
class EngagementEventAdmin(admin.ModelAdmin):
    """Read-only: engagement is recorded by providers and tracking, never edited."""

    list_display = ["occurred_at", "kind", "channel", "is_machine", "classification", "campaign_id", "message_id"]
    list_filter = ["kind", "channel", "is_machine", "classification"]
    search_fields = ["campaign_id", "message_id"]
    show_full_result_count = False

    def has_change_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False


@admin.register(MetricDelta)
class MetricDeltaAdmin(admin.ModelAdmin):
    """Read-only: written by the metric triggers, folded by the compaction task."""

    list_display = ["bucket", "campaign_id", "metric", "count", "amount", "channel", "created_at"]
    list_filter = ["metric", "channel"]
    search_fields = ["campaign_id", "run_id"]
    show_full_result_count = False

    def has_change_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False


@admin.register(ExperimentDecision)
class ExperimentDecisionAdmin(admin.ModelAdmin):
    """Read-only: the auto-winner's decisions, with the numbers they were made on."""

    list_display = ["decided_at", "campaign", "winner", "metric", "level", "messages_switched"]
    list_filter = ["metric", "level"]
    list_select_related = ["campaign", "winner"]
    search_fields = ["campaign__name"]

    def has_change_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False


@admin.register(Notice)
class NoticeAdmin(admin.ModelAdmin):
    list_display = ["created_at", "user", "text", "read_at"]
    list_select_related = ["user"]
    search_fields = ["text", "user__email"]
