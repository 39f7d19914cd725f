from __future__ import annotations

from django.db.models import QuerySet
from drf_spectacular.utils import extend_schema
from rest_framework import mixins, status, viewsets
from rest_framework.decorators import action
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from audiences import services
from audiences.access import ORGANISATION_ADMINS, require_organisation_admin
from audiences.models import ApiKey
from audiences.serializers import (
    ApiKeyCreateSerializer,
    ApiKeySerializer,
    IssuedApiKeySerializer,
    OrganisationSerializer,
    OrganisationUpdateSerializer,
)


class OrganisationView(APIView):
    """The caller's organisation and its defaults (throttle, quiet hours, senders, postal address)."""

    @extend_schema(responses=OrganisationSerializer)
    def get(self, request: Request) -> Response:
        data = OrganisationSerializer(request.actor.organisation).data
        if request.actor.role in ORGANISATION_ADMINS:
            # Receivers verify webhook signatures with this; only admins see it.
            data["webhook_secret"] = request.actor.organisation.webhook_secret
        return Response(data)

    @extend_schema(request=OrganisationUpdateSerializer, responses=OrganisationSerializer)
    def patch(self, request: Request) -> Response:
        payload = OrganisationUpdateSerializer(data=request.data, partial=True)
        payload.is_valid(raise_exception=True)
        organisation = services.organisation_update(actor=request.actor, changes=dict(payload.validated_data))
        return Response(OrganisationSerializer(organisation).data)


class WebhookSecretRotateView(APIView):
    """A new webhook signing secret (admins). Requests signed with the old one stop verifying at once."""

    @extend_schema(request=None, responses={200: OrganisationSerializer})
    def post(self, request: Request) -> Response:
        organisation = services.organisation_rotate_webhook_secret(actor=request.actor)
        return Response({"webhook_secret": organisation.webhook_secret})


class ApiKeyViewSet(mixins.ListModelMixin, viewsets.GenericViewSet):
    """API keys of the caller's organisation (admins only). The secret is returned once, at creation."""

    serializer_class = ApiKeySerializer
    lookup_value_regex = r"[0-9a-fA-F-]{36}"

    def get_queryset(self) -> QuerySet[ApiKey]:
        if getattr(self, "swagger_fake_view", False):  # schema generation has no actor
            return ApiKey.objects.none()
        require_organisation_admin(self.request.actor)
        return ApiKey.objects.filter(organisation=self.request.actor.organisation).order_by("-created_at")

    @extend_schema(request=ApiKeyCreateSerializer, responses={201: IssuedApiKeySerializer})
    def create(self, request: Request) -> Response:
        payload = ApiKeyCreateSerializer(data=request.data)
        payload.is_valid(raise_exception=True)
        issued = services.api_key_create(actor=request.actor, **payload.validated_data)
        data = ApiKeySerializer(issued.api_key).data | {"key": issued.secret}
        return Response(data, status=status.HTTP_201_CREATED)

    @extend_schema(request=None, responses=ApiKeySerializer)
    @action(detail=True, methods=["post"])
    def revoke(self, request: Request, pk: str) -> Response:
        api_key = self.get_queryset().get(pk=pk)
        return Response(ApiKeySerializer(services.api_key_revoke(actor=request.actor, api_key=api_key)).data)
