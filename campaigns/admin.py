from __future__ import annotations

from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest
from simple_history.admin import SimpleHistoryAdmin

from audiences.access import Actor
from audiences.models import Role
from campaigns import services
from campaigns.models import Campaign, CampaignSegment, ContentTemplate, Variant
from config.errors import Conflict


class CampaignSegmentInline(admin.TabularInline):
    model = CampaignSegment
    extra = 0
    autocomplete_fields = ["segment"]


class VariantInline(admin.TabularInline):
    model = Variant
    extra = 0
    fields = ["name", "position", "allocation_percent", "is_control", "content"]


def _admin_actor(request: HttpRequest, campaign: Campaign) -> Actor:
    """Staff act as admins of the campaign's organisation; the audit log names them."""
    return Actor(organisation=campaign.organisation, role=Role.ADMIN, user=request.user)


@admin.register(Campaign)
class CampaignAdmin(SimpleHistoryAdmin):
    list_display = [
        "name",
        "organisation",
        "type",
        "status",
        "channels",
        "scheduled_at",
        "created_at",
        "deleted_at",
    ]
    list_filter = ["status", "type", "organisation", ("deleted_at", admin.EmptyFieldListFilter), "created_at"]
    search_fields = ["name", "id", "organisation__name"]
    list_select_related = ["organisation", "owner"]
    readonly_fields = [
        "status",
        "created_at",
        "updated_at",
        "status_changed_at",
        "paused_at",
        "paused_by",
        "deleted_at",
        "deleted_by",
    ]
    date_hierarchy = "created_at"
    inlines = [CampaignSegmentInline, VariantInline]
    actions = ["clone_campaigns", "soft_delete_campaigns", "restore_campaigns"]
    show_full_result_count = False  # COUNT(*) over 100k+ rows on every changelist page is wasted work

    def _each(self, request: HttpRequest, queryset: QuerySet[Campaign], call: str, done: str) -> None:
        ok = 0
        for campaign in queryset.select_related("organisation"):
            try:
                getattr(services, call)(actor=_admin_actor(request, campaign), campaign_id=campaign.pk)
                ok += 1
            except (Conflict, Campaign.DoesNotExist) as exc:
                self.message_user(request, f"{campaign}: {exc}", messages.WARNING)
        self.message_user(request, f"{done} {ok} campaign(s).")

    @admin.action(description="Clone selected campaigns")
    def clone_campaigns(self, request: HttpRequest, queryset: QuerySet[Campaign]) -> None:
        self._each(request, queryset, "campaign_clone", "Cloned")

    @admin.action(description="Soft-delete selected campaigns")
    def soft_delete_campaigns(self, request: HttpRequest, queryset: QuerySet[Campaign]) -> None:
        self._each(request, queryset, "campaign_delete", "Deleted")

    @admin.action(description="Restore selected campaigns")
    def restore_campaigns(self, request: HttpRequest, queryset: QuerySet[Campaign]) -> None:
        self._each(request, queryset, "campaign_restore", "Restored")


@admin.register(Variant)
class VariantAdmin(SimpleHistoryAdmin):
    list_display = ["name", "campaign", "allocation_percent", "is_control"]
    list_filter = ["is_control"]
    search_fields = ["name", "campaign__name"]
    list_select_related = ["campaign"]


@admin.register(CampaignSegment)
class CampaignSegmentAdmin(SimpleHistoryAdmin):
    list_display = ["campaign", "segment", "role"]
    list_filter = ["role"]
    search_fields = ["campaign__name", "segment__name"]
    list_select_related = ["campaign", "segment"]


@admin.register(ContentTemplate)
class ContentTemplateAdmin(SimpleHistoryAdmin):
    list_display = ["name", "channel", "organisation", "updated_at"]
    list_filter = ["channel", "organisation"]
    search_fields = ["name", "description"]
    list_select_related = ["organisation"]
