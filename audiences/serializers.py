from __future__ import annotations

from rest_framework import serializers

from audiences.models import ApiKey, Organisation, Role
from audiences.services import ORGANISATION_SETTINGS


class OrganisationSerializer(serializers.ModelSerializer):
    timezone = serializers.CharField(read_only=True)

    class Meta:
        model = Organisation
        fields = ["id", "slug", *ORGANISATION_SETTINGS, "created_at", "updated_at"]
        read_only_fields = fields


class OrganisationUpdateSerializer(serializers.Serializer):
    name = serializers.CharField(max_length=200, required=False)
    timezone = serializers.CharField(max_length=64, required=False)
    default_messages_per_minute = serializers.IntegerField(min_value=1, required=False, allow_null=True)
    default_messages_per_hour = serializers.IntegerField(min_value=1, required=False, allow_null=True)
    default_quiet_hours_start = serializers.TimeField(required=False, allow_null=True)
    default_quiet_hours_end = serializers.TimeField(required=False, allow_null=True)
    sender_name = serializers.CharField(max_length=200, required=False, allow_blank=True)
    sender_email = serializers.EmailField(required=False, allow_blank=True)
    reply_to_email = serializers.EmailField(required=False, allow_blank=True)
    sms_sender_id = serializers.CharField(max_length=20, required=False, allow_blank=True)
    postal_address = serializers.CharField(max_length=1000, required=False, allow_blank=True)
    verified_senders = serializers.ListField(child=serializers.EmailField(), required=False, max_length=50)
    channel_limits_per_minute = serializers.DictField(
        child=serializers.IntegerField(min_value=1),
        required=False,
        help_text='Provider limits shared by all campaigns, messages per minute: {"email": 6000, "sms": 600}.',
    )

    frequency_caps = serializers.DictField(
        child=serializers.DictField(child=serializers.IntegerField()),
        required=False,
        help_text='At most N marketing messages per contact per channel in D days: {"email": {"count": 3, "days": 1}}.',
    )
    unknown_event_contacts = serializers.ChoiceField(choices=["create", "reject"], required=False)
    currency = serializers.CharField(
        max_length=3, required=False, help_text="ISO 4217 code of the currency revenue is reported in, e.g. EUR."
    )
    global_control_percent = serializers.DecimalField(
        max_digits=4,
        decimal_places=2,
        min_value=0,
        max_value=20,
        required=False,
        help_text="Share of contacts (0-20 %) who receive no marketing campaign (the global control group). 0: off.",
    )

    def validate_channel_limits_per_minute(self, value: dict[str, int]) -> dict[str, int]:
        channels = {"email", "sms", "whatsapp", "in_app", "webhook"}
        unknown = sorted(set(value) - channels)
        if unknown:
            raise serializers.ValidationError(f"Unknown channel(s): {', '.join(unknown)}.")
        return value


class ApiKeySerializer(serializers.ModelSerializer):
    class Meta:
        model = ApiKey
        fields = ["id", "name", "role", "prefix", "created_at", "last_used_at", "revoked_at"]
        read_only_fields = fields


class ApiKeyCreateSerializer(serializers.Serializer):
    name = serializers.CharField(max_length=100)
    role = serializers.ChoiceField(choices=Role.choices, default=Role.MARKETER)


class IssuedApiKeySerializer(ApiKeySerializer):
    key = serializers.CharField(help_text="The secret. Shown only in this response; store it now.")

    class Meta(ApiKeySerializer.Meta):
        fields = [*ApiKeySerializer.Meta.fields, "key"]
        read_only_fields = fields
