from __future__ import annotations

from django.contrib import admin
from django.http import HttpRequest

from compliance.models import AuditLogEntry


@admin.register(AuditLogEntry)
class AuditLogEntryAdmin(admin.ModelAdmin):
    """Read-only: the audit log is append-only, even for superusers."""

    list_display = ["occurred_at", "organisation", "actor_label", "action", "target_type", "target_repr"]
    list_filter = ["action", "target_type", "organisation", "occurred_at"]
    search_fields = ["actor_label", "target_id", "target_repr", "action"]
    list_select_related = ["organisation"]
    date_hierarchy = "occurred_at"
    show_full_result_count = False

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False
