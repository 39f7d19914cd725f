"""/api/v1/sending-domains/: the organisation's sending domains, their DKIM records and the record check.

Members read and check; only admins add domains, rotate keys and remove domains. The private key never leaves."""

from __future__ import annotations

from typing import Any

from django.db.models import QuerySet
from drf_spectacular.utils import extend_schema
from rest_framework import mixins, serializers, status, viewsets
from rest_framework.decorators import action
from rest_framework.request import Request
from rest_framework.response import Response

from delivery import dkim
from delivery.models import SendingDomain


class SendingDomainSerializer(serializers.ModelSerializer):
    record_name = serializers.CharField(read_only=True)
    record_type = serializers.SerializerMethodField()
    record_value = serializers.SerializerMethodField()
    record_strings = serializers.SerializerMethodField()

    class Meta:
        model = SendingDomain
        fields = [
            "id",
            "domain",
            "selector",
            "record_type",
            "record_name",
            "record_value",
            "record_strings",
            "check_status",
            "check_message",
            "checked_at",
            "key_created_at",
            "created_at",
        ]
        read_only_fields = fields

    def get_record_type(self, obj: SendingDomain) -> str:
        return "TXT"

    def get_record_value(self, obj: SendingDomain) -> str:
        return dkim.dns_record_value(obj.public_key)

    def get_record_strings(self, obj: SendingDomain) -> list[str]:
        return dkim.dns_record_strings(obj.public_key)


class SendingDomainCreateSerializer(serializers.Serializer):
    domain = serializers.CharField(max_length=253)


class SendingDomainViewSet(
    mixins.ListModelMixin, mixins.RetrieveModelMixin, mixins.DestroyModelMixin, viewsets.GenericViewSet
):
    serializer_class = SendingDomainSerializer
    lookup_value_regex = r"[0-9a-fA-F-]{36}"

    def get_queryset(self) -> QuerySet[SendingDomain]:
        if getattr(self, "swagger_fake_view", False):  # schema generation has no actor
            return SendingDomain.objects.none()
        return SendingDomain.objects.filter(organisation=self.request.actor.organisation)

    @extend_schema(request=SendingDomainCreateSerializer, responses={201: SendingDomainSerializer})
    def create(self, request: Request) -> Response:
        payload = SendingDomainCreateSerializer(data=request.data)
        payload.is_valid(raise_exception=True)
        sending_domain = dkim.sending_domain_create(actor=request.actor, domain=payload.validated_data["domain"])
        return Response(SendingDomainSerializer(sending_domain).data, status=status.HTTP_201_CREATED)

    def perform_destroy(self, instance: SendingDomain) -> None:
        dkim.sending_domain_delete(actor=self.request.actor, sending_domain=instance)

    @extend_schema(request=None, responses=SendingDomainSerializer)
    @action(detail=True, methods=["post"], url_path="rotate-key")
    def rotate_key(self, request: Request, pk: Any = None) -> Response:
        sending_domain = dkim.sending_domain_rotate_key(actor=request.actor, sending_domain=self.get_object())
        return Response(SendingDomainSerializer(sending_domain).data)

    @extend_schema(request=None, responses=SendingDomainSerializer)
    @action(detail=True, methods=["post"])
    def check(self, request: Request, pk: Any = None) -> Response:
        sending_domain = dkim.sending_domain_check(sending_domain=self.get_object())
        return Response(SendingDomainSerializer(sending_domain).data)
