from __future__ import annotations

from typing import Any

from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import serializers, status, viewsets
from rest_framework.request import Request
from rest_framework.response import Response

from audiences.adapters import AdapterError
from campaigns.content.library import (
    content_template_create,
    content_template_delete,
    library_outage,
    library_template_fallback,
    template_library,
)
from campaigns.models import Channel, ContentTemplate
from config.errors import Conflict


class ContentTemplateSerializer(serializers.Serializer):
    id = serializers.CharField(read_only=True)
    name = serializers.CharField(max_length=200)
    channel = serializers.ChoiceField(choices=Channel.choices)
    description = serializers.CharField(max_length=2000, required=False, allow_blank=True, default="")
    content = serializers.DictField()
    source = serializers.CharField(read_only=True)


class ContentTemplateViewSet(viewsets.ViewSet):
    """Reusable content ("start from template"), from the isA_Creative library (embedded by default)."""

    serializer_class = ContentTemplateSerializer
    lookup_value_regex = r"[^/]+"

    @extend_schema(parameters=[OpenApiParameter("channel", str)], responses=ContentTemplateSerializer(many=True))
    def list(self, request: Request) -> Response:
        channel = request.query_params.get("channel") or None
        if channel and channel not in Channel.values:
            raise serializers.ValidationError({"channel": [f"One of {', '.join(Channel.values)}."]})
        try:
            return Response(template_library().list(request.actor.organisation, channel))
        except AdapterError as exc:
            # isA_Creative down: a 503 with the reason, its templates as last fetched and our own library.
            outage = library_outage(request.actor.organisation, channel, exc)
            return Response(outage.as_dict(), status=status.HTTP_503_SERVICE_UNAVAILABLE, headers={"Retry-After": "30"})

    @extend_schema(responses=ContentTemplateSerializer)
    def retrieve(self, request: Request, pk: str) -> Response:
        organisation = request.actor.organisation
        try:
            found = template_library().get(organisation, pk)
        except AdapterError as exc:
            return Response(
                {
                    "detail": f"isA_Creative is unavailable: {exc}",
                    "code": "isa_creative_unavailable",
                    # The template as last fetched from isA_Creative, or this organisation's own of that id.
                    "cached": library_template_fallback(organisation, pk),
                },
                status=status.HTTP_503_SERVICE_UNAVAILABLE,
                headers={"Retry-After": "30"},
            )
        if found is None:
            return Response({"detail": "Not found."}, status=status.HTTP_404_NOT_FOUND)
        return Response(found)

    def _embedded_only(self) -> None:
        if not template_library().embedded:
            raise Conflict("Templates are managed in isA_Creative.", code="external_library")

    @extend_schema(request=ContentTemplateSerializer, responses={201: ContentTemplateSerializer})
    def create(self, request: Request) -> Response:
        self._embedded_only()
        payload = ContentTemplateSerializer(data=request.data)
        payload.is_valid(raise_exception=True)
        data: dict[str, Any] = dict(payload.validated_data)
        template = content_template_create(actor=request.actor, **data)
        return Response(
            template_library().get(request.actor.organisation, str(template.pk)), status=status.HTTP_201_CREATED
        )

    def destroy(self, request: Request, pk: str) -> Response:
        self._embedded_only()
        template = (
            ContentTemplate.objects.filter(organisation=request.actor.organisation, pk=pk).first()
            if _is_uuid(pk)
            else None
        )
        if template is None:
            return Response({"detail": "Not found."}, status=status.HTTP_404_NOT_FOUND)
        content_template_delete(actor=request.actor, template=template)
        return Response(status=status.HTTP_204_NO_CONTENT)


def _is_uuid(value: str) -> bool:
    import uuid

    try:
        uuid.UUID(value)
    except ValueError:
        return False
    return True
