"""The event API (the embedded event_service): POST /api/v1/events/ and the event-type catalogue."""

from __future__ import annotations

from typing import Any

from django.db.models import QuerySet
from drf_spectacular.utils import OpenApiExample, extend_schema, inline_serializer
from rest_framework import mixins, serializers, status, viewsets
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from audiences.events import MAX_BATCH, events_ingest
from audiences.models import EventType


class EventInSerializer(serializers.Serializer):
    """Documentation of one event; validation happens per item in audiences.events (bad items do not fail the
    batch)."""

    id = serializers.CharField(max_length=200, help_text="Your id for the event; a repeat is ignored.")
    type = serializers.CharField(max_length=100)
    contact = serializers.CharField(max_length=255, help_text="The contact's external id.")
    properties = serializers.DictField(required=False)
    occurred_at = serializers.DateTimeField(required=False, help_text="Default: when it is received.")


class IngestResultSerializer(serializers.Serializer):
    accepted = serializers.IntegerField()
    duplicates = serializers.IntegerField(help_text="Events whose id was already received (ignored).")
    contacts_created = serializers.IntegerField()
    errors = serializers.ListField(child=serializers.DictField(), help_text="[{index, errors: {field: [...]}}]")


class EventIngestView(APIView):
    """One event, or {"events": [...]} with up to 1,000. 202 when anything was accepted or ignored as a repeat;
    each bad item is reported by its index and the good ones are kept; 400 only when nothing could be used."""

    @extend_schema(
        request=inline_serializer("EventBatch", {"events": EventInSerializer(many=True)}),
        responses={202: IngestResultSerializer, 400: IngestResultSerializer},
        examples=[
            OpenApiExample(
                "Batch",
                value={
                    "events": [
                        {"id": "ord-1", "type": "order_completed", "contact": "user-42", "properties": {"value": 59.9}}
                    ]
                },
            )
        ],
    )
    def post(self, request: Request) -> Response:
        data: Any = request.data
        items = data.get("events") if isinstance(data, dict) and "events" in data else [data]
        if not isinstance(items, list) or not items:
            return Response({"events": ['Give one event or a non-empty list under "events".']}, status=400)
        if len(items) > MAX_BATCH:
            return Response({"events": [f"At most {MAX_BATCH} events per request."]}, status=400)
        result = events_ingest(actor=request.actor, items=items)
        used = result.accepted + result.duplicates
        return Response(result.as_dict(), status=status.HTTP_202_ACCEPTED if used else status.HTTP_400_BAD_REQUEST)


class EventTypeSerializer(serializers.ModelSerializer):
    class Meta:
        model = EventType
        fields = ["name", "total_count", "first_seen_at", "last_seen_at", "properties"]
        read_only_fields = fields


class EventTypeViewSet(mixins.ListModelMixin, viewsets.GenericViewSet):
    """The event types the organisation has sent, with their observed properties."""

    serializer_class = EventTypeSerializer

    def get_queryset(self) -> QuerySet[EventType]:
        if getattr(self, "swagger_fake_view", False):
            return EventType.objects.none()
        return EventType.objects.filter(organisation=self.request.actor.organisation)
