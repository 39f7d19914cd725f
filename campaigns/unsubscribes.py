"""Who unsubscribed from a campaign (US-CAM-017 AC-5/7): API list, console page and CSV, with reason and time.

Here rather than in compliance because the campaign must be found through the tenancy chokepoint
(campaigns.selectors), and compliance never imports campaigns.
"""

from __future__ import annotations

from typing import Any

from django.core.paginator import Paginator
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render
from drf_spectacular.utils import extend_schema
from rest_framework import generics, serializers

from audiences.decorators import member_required
from campaigns import selectors
from campaigns.views import get_campaign_or_404
from compliance.exports import csv_response
from compliance.models import Unsubscribe
from compliance.selectors import UNSUBSCRIBE_CSV_HEADER, unsubscribe_csv_rows, unsubscribes_for_campaign


class CampaignUnsubscribeSerializer(serializers.ModelSerializer):
    contact = serializers.SerializerMethodField(help_text="The contact's external id; null once erased.")
    email = serializers.SerializerMethodField()
    unsubscribed_at = serializers.DateTimeField(source="created_at")

    class Meta:
        model = Unsubscribe
        fields = ["id", "contact", "email", "channel", "source", "reason", "message_id", "run_id", "unsubscribed_at"]

    def get_contact(self, obj: Unsubscribe) -> str | None:
        return obj.contact.external_id if obj.contact else None

    def get_email(self, obj: Unsubscribe) -> str | None:
        return obj.contact.email if obj.contact else None


@extend_schema(tags=["campaigns"])
class CampaignUnsubscribesView(generics.ListAPIView):
    """Unsubscribes from this campaign's messages, newest first (another organisation's campaign: 404)."""

    serializer_class = CampaignUnsubscribeSerializer

    def get_queryset(self) -> Any:
        if getattr(self, "swagger_fake_view", False):
            return Unsubscribe.objects.none()
        campaign = selectors.campaign_get(self.request.actor, self.kwargs["campaign_pk"], include_deleted=True)
        return unsubscribes_for_campaign(campaign.organisation_id, campaign.pk)


@member_required
def campaign_unsubscribes_view(request: HttpRequest, campaign_id: Any) -> HttpResponse:
    campaign = get_campaign_or_404(request, campaign_id, include_deleted=True)
    page = Paginator(unsubscribes_for_campaign(campaign.organisation_id, campaign.pk), 50).get_page(
        request.GET.get("page")
    )
    return render(request, "campaigns/unsubscribes.html", {"campaign": campaign, "page": page})


@member_required
def campaign_unsubscribes_csv_view(request: HttpRequest, campaign_id: Any) -> HttpResponse:
    campaign = get_campaign_or_404(request, campaign_id, include_deleted=True)
    rows = unsubscribe_csv_rows(unsubscribes_for_campaign(campaign.organisation_id, campaign.pk))
    return csv_response(f"unsubscribes-{campaign.pk}.csv", UNSUBSCRIBE_CSV_HEADER, rows)
