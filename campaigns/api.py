from __future__ import annotations

from typing import Any

from django.db.models import QuerySet
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema, extend_schema_view
from rest_framework import mixins, serializers, status, viewsets
from rest_framework.decorators import action
from rest_framework.parsers import MultiPartParser
from rest_framework.request import Request
from rest_framework.response import Response

from audiences.access import require_campaign_write
from audiences.models import ContactAttribute
from campaigns import audience, selectors, services
from campaigns.content.media import store_icon
from campaigns.content.preview import campaign_preview, campaign_test_send
from campaigns.filters import CampaignFilter
from campaigns.models import Campaign
from campaigns.serializers import (
    CampaignSerializer,
    CampaignWriteSerializer,
    HistoryEntrySerializer,
    PreviewRequestSerializer,
    ScheduleSerializer,
    TestSendSerializer,
    VariantCloneSerializer,
)

UUID_PATTERN = r"[0-9a-fA-F-]{36}"

CONFLICT = OpenApiResponse(description="The campaign's status does not allow this; the body lists allowed actions.")

DELETED_PARAM = OpenApiParameter(
    "deleted",
    str,
    enum=["exclude", "include", "only"],
    default="exclude",
    description="Soft-deleted campaigns are hidden unless asked for.",
)


class DeletedParameter(serializers.Serializer):
    deleted = serializers.ChoiceField(choices=["exclude", "include", "only"], required=False, default="exclude")


@extend_schema_view(
    list=extend_schema(
        parameters=[
            DELETED_PARAM,
            OpenApiParameter("page_size", int, description="Default 20; values above 100 are clamped to 100."),
        ]
    ),
    create=extend_schema(request=CampaignWriteSerializer, responses={201: CampaignSerializer}),
    update=extend_schema(request=CampaignWriteSerializer, responses={200: CampaignSerializer, 409: CONFLICT}),
    partial_update=extend_schema(request=CampaignWriteSerializer, responses={200: CampaignSerializer, 409: CONFLICT}),
    destroy=extend_schema(responses={200: CampaignSerializer, 409: CONFLICT}),
)
class CampaignViewSet(
    mixins.ListModelMixin,
    mixins.RetrieveModelMixin,
    viewsets.GenericViewSet,
):
    """Campaigns of the caller's organisation. Another organisation's campaign is a 404."""

    read_actions = ("preview",)  # a POST that renders and changes nothing: analysts preview too

    serializer_class = CampaignSerializer
    filterset_class = CampaignFilter
    lookup_value_regex = UUID_PATTERN

    def get_queryset(self) -> QuerySet[Campaign]:
        if getattr(self, "swagger_fake_view", False):  # schema generation has no actor
            return Campaign.objects.none()
        deleted = "exclude"
        if self.action == "list":
            params = DeletedParameter(data=self.request.query_params)
            params.is_valid(raise_exception=True)
            deleted = params.validated_data["deleted"]
        elif self.action in ("retrieve", "history", "audience_estimate"):
            deleted = "include"  # a deleted campaign can still be looked at (and restored) within its window
        return selectors.campaign_list(self.request.actor, deleted=deleted)

    def _single_context(self) -> dict[str, Any]:
        names = ContactAttribute.objects.filter(organisation=self.request.actor.organisation).values_list(
            "name", flat=True
        )
        return {"with_warnings": True, "attribute_names": frozenset(names)}

    def _respond(self, campaign: Campaign, code: int = status.HTTP_200_OK) -> Response:
        fresh = selectors.campaign_get(self.request.actor, campaign.pk, include_deleted=True)
        return Response(CampaignSerializer(fresh, context=self._single_context()).data, status=code)

    def retrieve(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        return Response(CampaignSerializer(self.get_object(), context=self._single_context()).data)

    def create(self, request: Request) -> Response:
        payload = CampaignWriteSerializer(data=request.data)
        payload.is_valid(raise_exception=True)
        data = dict(payload.validated_data)
        variants = data.pop("variants", None)
        audience = data.pop("audience", None)
        campaign = services.campaign_create(actor=request.actor, variants=variants, audience=audience, **data)
        return self._respond(campaign, status.HTTP_201_CREATED)

    def _update(self, request: Request, pk: str, *, partial: bool) -> Response:
        payload = CampaignWriteSerializer(data=request.data, partial=partial)
        payload.is_valid(raise_exception=True)
        data = dict(payload.validated_data)
        variants = data.pop("variants", None)
        audience = data.pop("audience", None)
        if partial:
            # Only what the client sent; serializer defaults must not overwrite stored values.
            data = {key: value for key, value in data.items() if key in request.data}
        campaign = services.campaign_update(
            actor=request.actor, campaign_id=pk, changes=data, variants=variants, audience=audience
        )
        return self._respond(campaign)

    def update(self, request: Request, pk: str) -> Response:
        return self._update(request, pk, partial=False)

    def partial_update(self, request: Request, pk: str) -> Response:
        return self._update(request, pk, partial=True)

    def destroy(self, request: Request, pk: str) -> Response:
        """Soft delete (restorable for 30 days). Running campaigns must be paused first (409)."""
        campaign = services.campaign_delete(actor=request.actor, campaign_id=pk)
        return self._respond(campaign)

    @extend_schema(request=None, responses={201: CampaignSerializer})
    @action(detail=True, methods=["post"])
    def clone(self, request: Request, pk: str) -> Response:
        """A new independent draft named "Copy of …" with a deep copy of the configuration."""
        campaign = services.campaign_clone(actor=request.actor, campaign_id=pk)
        return self._respond(campaign, status.HTTP_201_CREATED)

    @extend_schema(request=None, responses={200: CampaignSerializer, 409: CONFLICT})
    @action(detail=True, methods=["post"])
    def restore(self, request: Request, pk: str) -> Response:
        campaign = services.campaign_restore(actor=request.actor, campaign_id=pk)
        return self._respond(campaign)

    @extend_schema(responses={200: HistoryEntrySerializer(many=True)})
    @action(detail=True, methods=["get"])
    def history(self, request: Request, pk: str) -> Response:
        """Who changed what and when, newest first."""
        campaign = self.get_object()
        return Response(HistoryEntrySerializer(selectors.campaign_history(campaign), many=True).data)

    @extend_schema(parameters=[OpenApiParameter("exact", bool)], responses=OpenApiTypes.OBJECT)
    @action(detail=True, methods=["get"], url_path="audience-estimate")
    def audience_estimate(self, request: Request, pk: str) -> Response:
        """How many contacts the audience holds right now, and how many of them the holdout keeps back."""
        campaign = self.get_object()
        exact = request.query_params.get("exact", "").lower() in ("1", "true", "yes")
        return Response(audience.audience_estimate(campaign, exact=exact))

    @extend_schema(request=PreviewRequestSerializer, responses=OpenApiTypes.OBJECT)
    @action(detail=True, methods=["post"])
    def preview(self, request: Request, pk: str) -> Response:
        """Render a variant for one channel exactly as it would be sent, for a given contact (contact_id) or the
        first contact of the audience, with template warnings (unknown variables)."""
        self.get_object()
        payload = PreviewRequestSerializer(data=request.data)
        payload.is_valid(raise_exception=True)
        return Response(campaign_preview(actor=request.actor, campaign_id=pk, **payload.validated_data))

    @extend_schema(request=VariantCloneSerializer, responses={201: CampaignSerializer})
    @action(detail=True, methods=["post"], url_path="variants/clone")
    def clone_variant(self, request: Request, pk: str) -> Response:
        """Copy a variant (its content; allocation 0 %) to iterate on it."""
        self.get_object()
        payload = VariantCloneSerializer(data=request.data)
        payload.is_valid(raise_exception=True)
        services.campaign_variant_clone(actor=request.actor, campaign_id=pk, **payload.validated_data)
        return self._respond(selectors.campaign_get(request.actor, pk), status.HTTP_201_CREATED)

    @extend_schema(
        request={
            "multipart/form-data": {"type": "object", "properties": {"icon": {"type": "string", "format": "binary"}}}
        },
        responses={201: OpenApiTypes.OBJECT},
    )
    @action(detail=True, methods=["post"], url_path="in-app-icon", parser_classes=[MultiPartParser])
    def in_app_icon(self, request: Request, pk: str) -> Response:
        """Upload an in-app icon (PNG, JPEG, GIF or WebP, at most 256 KB); use the returned URL as icon_url."""
        campaign = self.get_object()
        require_campaign_write(request.actor)
        upload = request.FILES.get("icon")
        if upload is None:
            raise serializers.ValidationError({"icon": ["Attach the image as 'icon'."]})
        url = store_icon(organisation_id=campaign.organisation_id, upload=upload)
        return Response({"icon_url": url}, status=status.HTTP_201_CREATED)

    @extend_schema(request=TestSendSerializer, responses=OpenApiTypes.OBJECT)
    @action(detail=True, methods=["post"], url_path="test-send")
    def test_send(self, request: Request, pk: str) -> Response:
        """Send a variant's email now to seed addresses (or the campaign's seed list)."""
        self.get_object()
        payload = TestSendSerializer(data=request.data)
        payload.is_valid(raise_exception=True)
        return Response(campaign_test_send(actor=request.actor, campaign_id=pk, **payload.validated_data))

    def _transition(self, request: Request, pk: str, action_name: str, **kwargs: Any) -> Response:
        campaign = services.campaign_transition(actor=request.actor, campaign_id=pk, action=action_name, **kwargs)
        return self._respond(campaign)

    @extend_schema(request=ScheduleSerializer, responses={200: CampaignSerializer, 409: CONFLICT})
    @action(detail=True, methods=["post"])
    def schedule(self, request: Request, pk: str) -> Response:
        """draft → scheduled: once (at least 5 minutes ahead) or recurring, in a timezone."""
        payload = ScheduleSerializer(data=request.data)
        payload.is_valid(raise_exception=True)
        return self._transition(request, pk, "schedule", schedule=payload.validated_data)

    @extend_schema(request=ScheduleSerializer, responses={200: CampaignSerializer, 409: CONFLICT})
    @action(detail=True, methods=["post"])
    def reschedule(self, request: Request, pk: str) -> Response:
        """Change the schedule of a scheduled campaign (it stays scheduled)."""
        payload = ScheduleSerializer(data=request.data)
        payload.is_valid(raise_exception=True)
        return self._transition(request, pk, "reschedule", schedule=payload.validated_data)

    @extend_schema(request=None, responses={200: CampaignSerializer, 409: CONFLICT})
    @action(detail=True, methods=["post"], url_path="send-now")
    def send_now(self, request: Request, pk: str) -> Response:
        """draft/scheduled → running: a run starts at once (a scheduled campaign's schedule is replaced)."""
        return self._transition(request, pk, "start")

    @extend_schema(request=None, responses={200: CampaignSerializer, 409: CONFLICT})
    @action(detail=True, methods=["post"])
    def unschedule(self, request: Request, pk: str) -> Response:
        """scheduled → draft, to edit it."""
        return self._transition(request, pk, "unschedule")

    @extend_schema(request=None, responses={200: CampaignSerializer, 409: CONFLICT})
    @action(detail=True, methods=["post"])
    def activate(self, request: Request, pk: str) -> Response:
        """draft → active (triggered campaigns)."""
        return self._transition(request, pk, "activate")

    @extend_schema(request=None, responses={200: CampaignSerializer, 409: CONFLICT})
    @action(detail=True, methods=["post"])
    def pause(self, request: Request, pk: str) -> Response:
        """running/active → paused."""
        return self._transition(request, pk, "pause")

    @extend_schema(request=None, responses={200: CampaignSerializer, 409: CONFLICT})
    @action(detail=True, methods=["post"])
    def resume(self, request: Request, pk: str) -> Response:
        """paused → running (scheduled) or active (triggered)."""
        return self._transition(request, pk, "resume")

    @extend_schema(request=None, responses={200: CampaignSerializer, 409: CONFLICT})
    @action(detail=True, methods=["post"])
    def complete(self, request: Request, pk: str) -> Response:
        """active → completed: a triggered campaign stops listening."""
        return self._transition(request, pk, "complete")

    @extend_schema(request=None, responses={200: CampaignSerializer, 409: CONFLICT})
    @action(detail=True, methods=["post"])
    def cancel(self, request: Request, pk: str) -> Response:
        """Stop for good."""
        return self._transition(request, pk, "cancel")
