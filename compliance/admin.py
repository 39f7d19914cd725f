from __future__ import annotations

from typing import Any

from django.contrib import admin
from django.http import HttpRequest
from simple_history.admin import SimpleHistoryAdmin

from compliance.models import (
    AuditLogEntry,
    ContactPreference,
    OutboxEvent,
    RunExclusion,
    SendingHold,
    Suppression,
    Unsubscribe,
)


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


@admin.register(RunExclusion)
class RunExclusionAdmin(AuditLogEntryAdmin):
    """Read-only, like the audit log it belongs to."""

    list_display = ["created_at", "organisation", "run_id", "contact_id", "channel", "reason"]
    list_filter = ["reason", "channel", "organisation"]
    search_fields = ["run_id", "campaign_id"]
    date_hierarchy = "created_at"


@admin.register(ContactPreference)
class ContactPreferenceAdmin(SimpleHistoryAdmin):
    list_display = ["contact", "organisation", "global_opt_out", "unsubscribed_at", "disabled_channels", "updated_at"]
    list_filter = ["global_opt_out", "organisation"]
    search_fields = ["contact__external_id"]
    raw_id_fields = ["contact"]


@admin.register(Suppression)
class SuppressionAdmin(SimpleHistoryAdmin):
    list_display = ["address", "reason", "organisation", "created_at"]
    list_filter = ["reason", "organisation"]
    search_fields = ["note"]
    readonly_fields = ["address_hash"]

    def get_search_results(self, request: HttpRequest, queryset: Any, search_term: str) -> Any:
        # Addresses are encrypted at rest: a whole address is found by its keyed hash.
        results, distinct = super().get_search_results(request, queryset, search_term)
        if search_term.strip():
            results |= queryset.filter(address=search_term.strip())
        return results, distinct


class ReadOnlyAdmin(admin.ModelAdmin):
    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False


@admin.register(Unsubscribe)
class UnsubscribeAdmin(ReadOnlyAdmin):
    """Records of what recipients did: read-only (change consent through the API or console, which audit it)."""

    list_display = ["created_at", "organisation", "contact", "campaign_id", "channel", "source", "reason"]
    list_filter = ["source", "channel", "organisation"]
    list_select_related = ["organisation", "contact"]
    search_fields = ["contact__external_id", "reason"]
    show_full_result_count = False


@admin.register(OutboxEvent)
class OutboxEventAdmin(ReadOnlyAdmin):
    list_display = ["id", "organisation", "kind", "contact_id", "created_at", "attempts", "delivered_at", "last_error"]
    list_filter = ["kind", ("delivered_at", admin.EmptyFieldListFilter)]
    list_select_related = ["organisation"]
    actions = ["retry_now"]

    @admin.action(description="Retry now (reset attempts)")
    def retry_now(self, request: HttpRequest, queryset: object) -> None:
        from django.utils import timezone

        from compliance.tasks import compliance_outbox_push_task
        from config.outage import task_enqueue

        count = queryset.filter(delivered_at__isnull=True).update(attempts=0, next_attempt_at=timezone.now())  # type: ignore[attr-defined]
        task_enqueue(compliance_outbox_push_task)  # beat's retry pushes them if the broker is down
        self.message_user(request, f"{count} pushes queued again.")


@admin.register(SendingHold)
class SendingHoldAdmin(ReadOnlyAdmin):
    """Complaint-rate holds; release them from the compliance console (audited)."""

    list_display = ["created_at", "organisation", "channel", "category", "released_at", "released_by", "reason"]
    list_filter = ["channel", ("released_at", admin.EmptyFieldListFilter)]
    list_select_related = ["organisation"]
