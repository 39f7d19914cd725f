"""Compliance API: a contact's preferences, the suppression list, the audit log. Thin: services decide."""

from __future__ import annotations

import csv
import io
from typing import Any

from django.core.exceptions import ValidationError as DjangoValidationError
from django.db.models import QuerySet
from django.http import HttpResponse
from django.utils import timezone
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import mixins, serializers, status, viewsets
from rest_framework.decorators import action
from rest_framework.parsers import FormParser, JSONParser, MultiPartParser
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from audiences.access import PROVIDER_POSTERS
from audiences.contacts import normalise_phone
from compliance import selectors, services
from compliance.exports import csv_response
from compliance.models import AuditLogEntry, RunExclusion, Suppression

MAX_IMPORT_BYTES = 5 * 1024 * 1024


class PreferencesSerializer(serializers.Serializer):
    global_opt_out = serializers.BooleanField(help_text="Out of every campaign message on every channel.")
    unsubscribed = serializers.BooleanField(help_text="Out of every marketing campaign.")
    unsubscribed_at = serializers.DateTimeField(allow_null=True, read_only=True)
    disabled_channels = serializers.ListField(child=serializers.ChoiceField(choices=services.CHANNELS))
    disabled_categories = serializers.ListField(child=serializers.ChoiceField(choices=services.CATEGORIES))
    quiet_hours_start = serializers.TimeField(allow_null=True, help_text="Local time in the contact's timezone.")
    quiet_hours_end = serializers.TimeField(allow_null=True)


class ContactPreferencesView(APIView):
    """A contact's consent: GET it, PUT all of it or PATCH some. Changes apply to queued messages at once."""

    def _contact(self, request: Request, contact_pk: int) -> Any:
        return services.contact_get(request.actor, contact_pk)

    @extend_schema(responses=PreferencesSerializer)
    def get(self, request: Request, contact_pk: int) -> Response:
        contact = self._contact(request, contact_pk)
        return Response(services.preference_state(services.preference_for(contact)))

    def _change(self, request: Request, contact_pk: int, *, partial: bool) -> Response:
        contact = self._contact(request, contact_pk)
        payload = PreferencesSerializer(data=request.data, partial=partial)
        payload.is_valid(raise_exception=True)
        preference, _ = services.preference_update(
            actor=request.actor, contact=contact, changes=dict(payload.validated_data), source="api"
        )
        return Response(services.preference_state(preference))

    @extend_schema(request=PreferencesSerializer, responses=PreferencesSerializer)
    def put(self, request: Request, contact_pk: int) -> Response:
        return self._change(request, contact_pk, partial=False)

    @extend_schema(request=PreferencesSerializer, responses=PreferencesSerializer)
    def patch(self, request: Request, contact_pk: int) -> Response:
        return self._change(request, contact_pk, partial=True)


class SuppressionSerializer(serializers.ModelSerializer):
    class Meta:
        model = Suppression
        fields = ["id", "address", "reason", "note", "created_at"]
        read_only_fields = ["id", "reason", "created_at"]


class SuppressionCreateSerializer(serializers.Serializer):
    address = serializers.CharField(max_length=254)
    note = serializers.CharField(max_length=500, required=False, allow_blank=True, default="")


class SuppressionImportSerializer(serializers.Serializer):
    addresses = serializers.ListField(child=serializers.CharField(allow_blank=True), required=False, max_length=100_000)
    file = serializers.FileField(required=False, help_text="A CSV: the first column of each row is an address.")
    note = serializers.CharField(max_length=500, required=False, allow_blank=True, default="")

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        if not attrs.get("addresses") and not attrs.get("file"):
            raise serializers.ValidationError({"addresses": ["Give a list of addresses or a CSV file."]})
        upload = attrs.get("file")
        if upload is not None:
            if upload.size > MAX_IMPORT_BYTES:
                raise serializers.ValidationError({"file": ["At most 5 MB."]})
            try:
                text = upload.read().decode("utf-8-sig")
            except UnicodeDecodeError as exc:
                raise serializers.ValidationError({"file": ["Not UTF-8 text."]}) from exc
            attrs["addresses"] = list(attrs.get("addresses") or []) + addresses_from_csv(text)
        return attrs


def addresses_from_csv(text: str) -> list[str]:
    """The first column of each row, without a header row naming it."""
    rows = [row[0].strip() for row in csv.reader(io.StringIO(text)) if row]
    if rows and rows[0].lower() in ("address", "email", "phone", "addresses"):
        rows = rows[1:]
    return rows


class SuppressionViewSet(mixins.ListModelMixin, mixins.DestroyModelMixin, viewsets.GenericViewSet):
    """The organisation's suppression list: hard bounces and complaints (automatic), manual and imported
    addresses, erased contacts' hashed addresses. `?search=` matches an address prefix, `?reason=` filters."""

    serializer_class = SuppressionSerializer

    def get_queryset(self) -> QuerySet[Suppression]:
        if getattr(self, "swagger_fake_view", False):
            return Suppression.objects.none()
        return selectors.suppression_list(
            self.request.actor.organisation,
            search=self.request.query_params.get("search", ""),
            reason=self.request.query_params.get("reason", ""),
        )

    @extend_schema(request=SuppressionCreateSerializer, responses={201: SuppressionSerializer})
    def create(self, request: Request) -> Response:
        payload = SuppressionCreateSerializer(data=request.data)
        payload.is_valid(raise_exception=True)
        suppression = services.suppression_add(actor=request.actor, **payload.validated_data)
        return Response(SuppressionSerializer(suppression).data, status=status.HTTP_201_CREATED)

    def perform_destroy(self, instance: Suppression) -> None:
        services.suppression_remove(actor=self.request.actor, suppression=instance)

    @extend_schema(request=SuppressionImportSerializer, responses={200: dict})
    @action(detail=False, methods=["post"], url_path="import", parser_classes=[JSONParser, MultiPartParser, FormParser])
    def import_(self, request: Request) -> Response:
        payload = SuppressionImportSerializer(data=request.data)
        payload.is_valid(raise_exception=True)
        result = services.suppressions_import(
            actor=request.actor, addresses=payload.validated_data["addresses"], note=payload.validated_data["note"]
        )
        return Response(result)


class AuditLogSerializer(serializers.ModelSerializer):
    class Meta:
        model = AuditLogEntry
        fields = [
            "id",
            "occurred_at",
            "action",
            "target_type",
            "target_id",
            "target_repr",
            "actor_label",
            "ip_address",
            "details",
        ]


AUDIT_FILTERS = [
    OpenApiParameter("action", str, description="Exact action, or a prefix ending in '.' (e.g. 'contact.')."),
    OpenApiParameter("target_type", str),
    OpenApiParameter("target_id", str),
    OpenApiParameter("actor", str, description="Actor label contains (case-insensitive)."),
    OpenApiParameter("since", str, description="ISO date or date-time; a date means from its start."),
    OpenApiParameter("until", str, description="ISO date or date-time; a date means to its end."),
]


class AuditLogViewSet(mixins.ListModelMixin, viewsets.GenericViewSet):
    """The organisation's append-only audit log, newest first, filterable; `export` downloads it as CSV."""

    serializer_class = AuditLogSerializer

    def get_queryset(self) -> QuerySet[AuditLogEntry]:
        if getattr(self, "swagger_fake_view", False):
            return AuditLogEntry.objects.none()
        return selectors.audit_log(self.request.actor, selectors.audit_filters(self.request.query_params))

    @extend_schema(parameters=AUDIT_FILTERS)
    def list(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        return super().list(request, *args, **kwargs)

    @extend_schema(parameters=AUDIT_FILTERS, responses={(200, "text/csv"): str})
    @action(detail=False, methods=["get"])
    def export(self, request: Request) -> HttpResponse:
        return csv_response("audit-log.csv", selectors.AUDIT_CSV_HEADER, selectors.audit_csv_rows(self.get_queryset()))


class RunExclusionSerializer(serializers.ModelSerializer):
    class Meta:
        model = RunExclusion
        fields = ["id", "created_at", "run_id", "campaign_id", "contact_id", "channel", "reason"]


EXCLUSION_FILTERS = [
    OpenApiParameter("run", str, description="Run id."),
    OpenApiParameter("campaign", str, description="Campaign id."),
    OpenApiParameter("contact", int, description="Contact id."),
    OpenApiParameter(
        "reason", str, description="opted_out, unsubscribed, category_disabled, channel_disabled or suppressed."
    ),
    OpenApiParameter("channel", str, description="Channel; blank rows mean every channel of the campaign."),
]


class RunExclusionViewSet(mixins.ListModelMixin, viewsets.GenericViewSet):
    """Why each excluded audience member of a run got no message (the per-recipient half of the run's
    `run.fan_out` audit entry); `export` downloads it as CSV. Read-only, like the audit log."""

    serializer_class = RunExclusionSerializer

    def get_queryset(self) -> QuerySet[RunExclusion]:
        if getattr(self, "swagger_fake_view", False):
            return RunExclusion.objects.none()
        return selectors.run_exclusions(self.request.actor, selectors.exclusion_filters(self.request.query_params))

    @extend_schema(parameters=EXCLUSION_FILTERS)
    def list(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        return super().list(request, *args, **kwargs)

    @extend_schema(parameters=EXCLUSION_FILTERS, responses={(200, "text/csv"): str})
    @action(detail=False, methods=["get"])
    def export(self, request: Request) -> HttpResponse:
        return csv_response(
            "run-exclusions.csv", selectors.EXCLUSION_CSV_HEADER, selectors.exclusion_csv_rows(self.get_queryset())
        )


class InboundSerializer(serializers.Serializer):
    channel = serializers.ChoiceField(choices=["sms", "whatsapp"])
    sender = serializers.CharField(max_length=32, help_text="The contact's number, E.164.")
    body = serializers.CharField(max_length=4096, allow_blank=True, required=False, default="")
    received_at = serializers.DateTimeField(required=False)

    def validate_sender(self, value: str) -> str:
        try:
            return normalise_phone(value)
        except DjangoValidationError as exc:
            raise serializers.ValidationError(exc.messages) from exc

    def to_internal_value(self, data: Any) -> Any:
        if isinstance(data, dict) and "from" in data and "sender" not in data:
            data = {**data, "sender": data["from"]}
        return super().to_internal_value(data)


class InboundBatchSerializer(serializers.Serializer):
    messages = InboundSerializer(many=True, min_length=1, max_length=1000)


class InboundView(APIView):
    """Messages contacts sent (from the notification_service): `STOP` turns the channel off for that number,
    `START` back on; any inbound WhatsApp opens its 24-hour session for free-form messages."""

    write_roles = PROVIDER_POSTERS

    @extend_schema(request=InboundBatchSerializer, responses={200: dict})
    def post(self, request: Request) -> Response:
        payload = InboundBatchSerializer(data=request.data)
        payload.is_valid(raise_exception=True)
        now = timezone.now()
        items = [
            {
                "channel": m["channel"],
                "from": m["sender"],
                "body": m["body"],
                "received_at": m.get("received_at") or now,
            }
            for m in payload.validated_data["messages"]
        ]
        return Response(services.inbound_record(actor=request.actor, items=items))
