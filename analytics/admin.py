from __future__ import annotations

from django.contrib import admin
from django.http import HttpRequest

from analytics.models import EngagementEvent


@admin.register(EngagementEvent)
class EngagementEventAdmin(admin.ModelAdmin):
    """Read-only: engagement is recorded by providers and tracking, never edited."""

    list_display = ["occurred_at", "kind", "channel", "is_machine", "campaign_id", "message_id"]
    list_filter = ["kind", "channel", "is_machine"]
    search_fields = ["campaign_id", "message_id"]
    show_full_result_count = False

    def has_change_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False
