from __future__ import annotations

from typing import Any

from django.contrib import admin
from django.db.models import Count, QuerySet
from django.http import HttpRequest
from simple_history.admin import SimpleHistoryAdmin

from audiences.models import (
    ApiKey,
    Contact,
    ContactAttribute,
    ContactImport,
    Event,
    EventFeedCursor,
    EventType,
    Membership,
    Organisation,
    Segment,
)
from audiences.pii import contact_search


class MembershipInline(admin.TabularInline):
    model = Membership
    extra = 0
    autocomplete_fields = ["user"]


@admin.register(Organisation)
class OrganisationAdmin(SimpleHistoryAdmin):
    list_display = ["name", "slug", "timezone", "member_count", "created_at"]
    search_fields = ["name", "slug"]
    list_filter = ["created_at"]
    inlines = [MembershipInline]

    def get_queryset(self, request: HttpRequest) -> QuerySet[Organisation]:
        return super().get_queryset(request).annotate(member_total=Count("memberships"))

    @admin.display(ordering="member_total", description="Members")
    def member_count(self, obj: Organisation) -> int:
        return obj.member_total  # type: ignore[attr-defined]


@admin.register(Membership)
class MembershipAdmin(SimpleHistoryAdmin):
    list_display = ["user", "organisation", "role", "created_at"]
    list_filter = ["role", "organisation"]
    search_fields = ["user__username", "user__email", "organisation__name"]
    list_select_related = ["user", "organisation"]
    autocomplete_fields = ["user", "organisation"]


@admin.register(ApiKey)
class ApiKeyAdmin(SimpleHistoryAdmin):
    list_display = ["name", "organisation", "role", "prefix", "created_at", "last_used_at", "revoked_at"]
    list_filter = ["role", "organisation", ("revoked_at", admin.EmptyFieldListFilter)]
    search_fields = ["name", "prefix", "organisation__name"]
    list_select_related = ["organisation"]
    readonly_fields = ["prefix", "key_hash", "created_at", "last_used_at", "revoked_at", "created_by"]
    fields = ["organisation", "name", "role", *readonly_fields]

    def has_add_permission(self, request: HttpRequest) -> bool:
        # A key's secret is shown once at creation; the console, API and `create_api_key` do that, the admin can't.
        return False


@admin.register(Contact)
class ContactAdmin(admin.ModelAdmin):
    list_display = ["external_id", "organisation", "email", "phone", "timezone", "locale", "updated_at"]
    list_filter = ["organisation", "locale", "created_at"]
    search_fields = ["external_id", "first_name", "last_name"]
    list_select_related = ["organisation"]
    show_full_result_count = False  # millions of contacts: no COUNT(*) per page
    readonly_fields = ["created_at", "updated_at", "email_hash", "phone_hash", "email_domain"]

    def get_search_results(self, request: Any, queryset: Any, search_term: str) -> Any:
        # Emails and phones are encrypted at rest: a whole address is found by its keyed hash.
        results, distinct = super().get_search_results(request, queryset, search_term)
        if search_term.strip():
            results |= queryset.filter(contact_search(search_term))
        return results, distinct


@admin.register(ContactAttribute)
class ContactAttributeAdmin(admin.ModelAdmin):
    list_display = ["name", "type", "organisation", "examples", "last_seen_at"]
    list_filter = ["type", "organisation"]
    search_fields = ["name"]
    list_select_related = ["organisation"]


@admin.register(ContactImport)
class ContactImportAdmin(admin.ModelAdmin):
    list_display = [
        "filename",
        "organisation",
        "status",
        "processed_rows",
        "total_rows",
        "rejected_count",
        "created_at",
    ]
    list_filter = ["status", "organisation"]
    search_fields = ["filename"]
    list_select_related = ["organisation"]
    readonly_fields = [f.name for f in ContactImport._meta.fields]


# SegmentMember has a composite primary key, which the admin cannot edit; members are managed through the
# segment's API and console pages.
@admin.register(Segment)
class SegmentAdmin(SimpleHistoryAdmin):
    list_display = ["name", "organisation", "kind", "updated_at"]
    list_filter = ["kind", "organisation"]
    search_fields = ["name", "description"]
    list_select_related = ["organisation"]


@admin.register(Event)
class EventAdmin(admin.ModelAdmin):
    """Read-only: events arrive through the event API."""

    list_display = ["occurred_at", "type", "event_id", "contact_id", "organisation"]
    list_filter = ["type"]
    search_fields = ["event_id", "type"]
    show_full_result_count = False

    def has_change_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False


@admin.register(EventType)
class EventTypeAdmin(admin.ModelAdmin):
    list_display = ["name", "organisation", "total_count", "last_seen_at"]
    search_fields = ["name"]
    readonly_fields = ["organisation", "name", "total_count", "first_seen_at", "last_seen_at", "properties"]


@admin.register(EventFeedCursor)
class EventFeedCursorAdmin(admin.ModelAdmin):
    list_display = ["organisation", "position", "updated_at"]
