from __future__ import annotations

from django.contrib import admin
from django.db.models import QuerySet
from django.http import HttpRequest

from delivery.dkim import sending_domain_check
from delivery.models import (
    ContactSendCount,
    InboxMessage,
    Message,
    Run,
    SandboxHandoff,
    ScheduledEngagement,
    SeedSend,
    SendingDomain,
    TriggerDecision,
)


@admin.register(Run)
class RunAdmin(admin.ModelAdmin):
    list_display = ["campaign", "number", "status", "audience_count", "message_count", "holdout_count", "created_at"]
    list_filter = ["status", "organisation"]
    search_fields = ["campaign__name", "id"]
    list_select_related = ["campaign"]
    readonly_fields = [f.name for f in Run._meta.fields]


@admin.register(Message)
class MessageAdmin(admin.ModelAdmin):
    """Read-only: messages change only through the delivery engine."""

    list_display = ["id", "run", "channel", "status", "parts", "due_at", "attempts", "sent_at", "error"]
    list_filter = ["status", "channel"]
    search_fields = ["provider_message_id", "contact__external_id"]
    list_select_related = ["run", "run__campaign"]
    raw_id_fields = ["run", "contact", "variant"]
    show_full_result_count = False

    def has_change_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False


@admin.register(SandboxHandoff)
class SandboxHandoffAdmin(admin.ModelAdmin):
    """The sandbox provider's own books (read-only): hand-offs per idempotency key."""

    list_display = ["idempotency_key", "channel", "handoffs", "outcome", "first_at"]
    list_filter = ["channel", "outcome"]
    search_fields = ["idempotency_key"]
    show_full_result_count = False

    def has_change_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False


@admin.register(ScheduledEngagement)
class ScheduledEngagementAdmin(admin.ModelAdmin):
    """The sandbox's simulated engagement waiting for its time (read-only): recorded and deleted when due."""

    list_display = ["message_id", "kind", "due_at", "is_machine", "value"]
    list_filter = ["kind", "is_machine"]
    search_fields = ["=message_id"]
    show_full_result_count = False

    def has_change_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False


@admin.register(InboxMessage)
class InboxMessageAdmin(admin.ModelAdmin):
    """In-app messages as contacts see them (read-only)."""

    list_display = ["message_id", "title", "contact_id", "created_at", "read_at"]
    search_fields = ["title", "message_id"]
    show_full_result_count = False

    def has_change_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False


@admin.register(TriggerDecision)
class TriggerDecisionAdmin(admin.ModelAdmin):
    """Counters of what triggered campaigns decided (read-only)."""

    list_display = ["campaign", "decision", "count", "last_at"]
    list_filter = ["decision"]
    list_select_related = ["campaign"]

    def has_change_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False


@admin.register(ContactSendCount)
class ContactSendCountAdmin(admin.ModelAdmin):
    """Marketing sends per contact, channel and local day, for frequency caps (read-only)."""

    list_display = ["contact_id", "channel", "day", "count"]
    list_filter = ["channel", "day"]
    search_fields = ["contact_id"]
    show_full_result_count = False

    def has_change_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False


@admin.register(SeedSend)
class SeedSendAdmin(admin.ModelAdmin):
    """Test sends and seed copies (read-only): what went to the seeds, and what the provider answered."""

    list_display = ["created_at", "campaign", "kind", "channel", "address", "status", "attempts", "error"]
    list_filter = ["kind", "channel", "status"]
    search_fields = ["address", "campaign__name", "idempotency_key"]
    list_select_related = ["campaign"]
    raw_id_fields = ["campaign", "run", "variant"]
    readonly_fields = [f.name for f in SeedSend._meta.fields]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False


@admin.register(SendingDomain)
class SendingDomainAdmin(admin.ModelAdmin):
    """Read-only: keys are created, rotated and removed in the console (audited there). The private key is never
    shown, not even encrypted."""

    list_display = ["domain", "organisation", "selector", "check_status", "checked_at", "key_created_at"]
    list_filter = ["check_status"]
    search_fields = ["domain", "organisation__name"]
    list_select_related = ["organisation"]
    exclude = ["private_key"]
    readonly_fields = [f.name for f in SendingDomain._meta.fields if f.name != "private_key"]
    actions = ["check_records"]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False

    @admin.action(description="Check the published DKIM records now")
    def check_records(self, request: HttpRequest, queryset: QuerySet[SendingDomain]) -> None:
        for sending_domain in queryset:
            sending_domain_check(sending_domain=sending_domain)
        self.message_user(request, f"Checked {queryset.count()} sending domain(s).")
