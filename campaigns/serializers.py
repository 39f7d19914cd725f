from __future__ import annotations

from typing import Any

from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from campaigns.content.names import campaign_content_warnings
from campaigns.models import Campaign, CampaignType, Channel, Recurrence, Variant
from campaigns.scheduling import campaign_timezone, describe_schedule
from campaigns.services import MAX_VARIANTS, allowed_transitions, campaign_restore_deadline


class VariantSerializer(serializers.ModelSerializer):
    name = serializers.CharField(max_length=100)
    allocation_percent = serializers.IntegerField(min_value=0, max_value=100)
    is_control = serializers.BooleanField(default=False)
    content = serializers.DictField(
        child=serializers.DictField(),
        required=False,
        default=dict,
        help_text="Content per channel, keyed by channel name.",
    )

    class Meta:
        model = Variant
        fields = ["id", "name", "allocation_percent", "is_control", "content"]
        read_only_fields = ["id"]


class AudienceSerializer(serializers.Serializer):
    include = serializers.ListField(
        child=serializers.UUIDField(), required=False, max_length=50, help_text="Segments whose members are in."
    )
    combine = serializers.ChoiceField(
        choices=["and", "or"], required=False, help_text="Members of all (and) or any (or) included segment."
    )
    exclude = serializers.ListField(
        child=serializers.UUIDField(), required=False, max_length=50, help_text="Segments whose members are out."
    )
    rules = serializers.JSONField(
        required=False, allow_null=True, help_text="An inline rule tree, ANDed with the included segments."
    )
    holdout_percent = serializers.DecimalField(
        max_digits=4,
        decimal_places=2,
        min_value=0,
        max_value=20,
        required=False,
        help_text="Share kept as a control group (0-20). Deterministic per contact and campaign.",
    )


class AllowedTransitionSerializer(serializers.Serializer):
    action = serializers.CharField()
    status = serializers.CharField()


class CampaignScheduleSerializer(serializers.Serializer):
    timezone = serializers.CharField()
    recurrence = serializers.ChoiceField(choices=Recurrence.choices)
    cron = serializers.CharField(help_text="Five-field cron, in timezone's wall-clock time; empty when one-time.")
    ends_at = serializers.DateTimeField(allow_null=True)
    next_run_at = serializers.DateTimeField(allow_null=True)
    description = serializers.CharField()


class CampaignSerializer(serializers.ModelSerializer):
    """What the API returns for a campaign."""

    owner = serializers.SerializerMethodField()
    schedule = serializers.SerializerMethodField()
    audience = serializers.SerializerMethodField()
    variants = VariantSerializer(many=True, read_only=True)
    allowed_actions = serializers.SerializerMethodField()
    restore_deadline = serializers.SerializerMethodField()
    content_warnings = serializers.SerializerMethodField()

    class Meta:
        model = Campaign
        fields = [
            "id",
            "name",
            "description",
            "type",
            "status",
            "channels",
            "owner",
            "scheduled_at",
            "schedule",
            "messages_per_minute",
            "messages_per_hour",
            "send_window_start",
            "send_window_end",
            "skip_weekends",
            "local_send_time",
            "sandbox_profile",
            "category",
            "bypass_frequency_cap",
            "conversion_event",
            "attribution_days",
            "attribution_model",
            "auto_winner_enabled",
            "auto_winner_metric",
            "auto_winner_level",
            "auto_winner_min_sample",
            "experiment_test_percent",
            "experiment_window_hours",
            "experiment_decide",
            "experiment_fallback",
            "experiment_fallback_variant",
            "trigger_event",
            "trigger_conditions",
            "trigger_delay_seconds",
            "quiet_hours_start",
            "quiet_hours_end",
            "quiet_hours_policy",
            "frequency_limit",
            "tracking_enabled",
            "seed_emails",
            "seed_phones",
            "seed_copy_every_send",
            "sms_allow_multipart",
            "audience",
            "variants",
            "allowed_actions",
            "created_at",
            "updated_at",
            "status_changed_at",
            "paused_at",
            "paused_by",
            "deleted_at",
            "deleted_by",
            "restore_deadline",
            "content_warnings",
        ]
        read_only_fields = fields

    @extend_schema_field(CampaignScheduleSerializer)
    def get_schedule(self, campaign: Campaign) -> dict[str, Any]:
        return {
            "timezone": campaign_timezone(campaign),
            "recurrence": campaign.recurrence,
            "cron": campaign.cron_expression,
            "ends_at": serializers.DateTimeField().to_representation(campaign.recurrence_ends_at)
            if campaign.recurrence_ends_at
            else None,
            "next_run_at": serializers.DateTimeField().to_representation(campaign.scheduled_at)
            if campaign.scheduled_at
            else None,
            "description": describe_schedule(campaign) if campaign.scheduled_at else "",
        }

    def get_owner(self, campaign: Campaign) -> str | None:
        return campaign.owner.get_username() if campaign.owner else None

    @extend_schema_field(serializers.ListField(child=serializers.CharField()))
    def get_content_warnings(self, campaign: Campaign) -> list[str]:
        """Template variables no message will provide (they render empty). Only on single-campaign responses."""
        if not self.context.get("with_warnings"):
            return []
        return campaign_content_warnings(campaign, attribute_names=self.context.get("attribute_names", frozenset()))

    @extend_schema_field(AudienceSerializer)
    def get_audience(self, campaign: Campaign) -> dict[str, Any]:
        links = campaign.segment_links.all()  # prefetched
        return {
            "include": [str(link.segment_id) for link in links if link.role == "include"],
            "combine": campaign.audience_combine,
            "exclude": [str(link.segment_id) for link in links if link.role == "exclude"],
            "rules": campaign.audience_rules,
            "holdout_percent": str(campaign.holdout_percent),
        }

    @staticmethod
    def _allowed(campaign: Campaign) -> list[dict[str, str]]:
        return [] if campaign.deleted_at else allowed_transitions(campaign)

    @extend_schema_field(AllowedTransitionSerializer(many=True))
    def get_allowed_actions(self, campaign: Campaign) -> list[dict[str, str]]:
        return self._allowed(campaign)

    @extend_schema_field(serializers.DateTimeField(allow_null=True))
    def get_restore_deadline(self, campaign: Campaign) -> Any:
        deadline = campaign_restore_deadline(campaign)
        return serializers.DateTimeField().to_representation(deadline) if deadline else None


class CampaignWriteSerializer(serializers.Serializer):
    """What a client may send to create or change a campaign. Business rules live in campaigns.services."""

    name = serializers.CharField(max_length=200)
    description = serializers.CharField(max_length=5000, allow_blank=True, required=False, default="")
    type = serializers.ChoiceField(choices=CampaignType.choices, required=False, default=CampaignType.SCHEDULED)
    channels = serializers.ListField(
        child=serializers.ChoiceField(choices=Channel.choices), required=False, default=list, max_length=5
    )
    scheduled_at = serializers.DateTimeField(required=False, allow_null=True, default=None)
    messages_per_minute = serializers.IntegerField(min_value=1, required=False, allow_null=True, default=None)
    messages_per_hour = serializers.IntegerField(min_value=1, required=False, allow_null=True, default=None)
    send_window_start = serializers.TimeField(
        required=False, allow_null=True, default=None, help_text="Daily window, in each recipient's timezone."
    )
    send_window_end = serializers.TimeField(required=False, allow_null=True, default=None)
    skip_weekends = serializers.BooleanField(required=False, default=False)
    local_send_time = serializers.TimeField(
        required=False, allow_null=True, default=None, help_text='"9:00 wherever they are".'
    )
    sandbox_profile = serializers.DictField(
        required=False, default=dict, help_text="How the sandbox provider behaves for this campaign."
    )
    category = serializers.ChoiceField(
        choices=["marketing", "transactional"],
        required=False,
        default="marketing",
        help_text="Transactional messages never count against frequency caps.",
    )
    bypass_frequency_cap = serializers.BooleanField(required=False, default=False)
    conversion_event = serializers.CharField(
        max_length=100,
        required=False,
        allow_blank=True,
        default="",
        help_text="Event type that counts as a conversion.",
    )
    attribution_days = serializers.IntegerField(min_value=1, max_value=30, required=False, default=7)
    attribution_model = serializers.ChoiceField(
        choices=["last_touch", "first_touch", "linear"],
        required=False,
        default="last_touch",
        help_text="Which messages in the window get a conversion's credit (linear: all, value split evenly).",
    )
    auto_winner_enabled = serializers.BooleanField(
        required=False, default=False, help_text="Send the rest to the winner once one is significant."
    )
    auto_winner_metric = serializers.ChoiceField(
        choices=["click", "conversion", "open"],
        required=False,
        default="click",
        help_text="Clicks or conversions are safer than opens, which privacy proxies and image blocking distort.",
    )
    auto_winner_level = serializers.ChoiceField(choices=[90, 95, 99], required=False, default=95)
    auto_winner_min_sample = serializers.IntegerField(min_value=100, required=False, default=1000)
    experiment_test_percent = serializers.IntegerField(
        min_value=0,
        max_value=90,
        required=False,
        default=0,
        help_text="With the auto-winner: send this % of the audience first, split across the variants, and the winner "
        "to the rest (one-time campaigns). 0: no test share.",
    )
    experiment_window_hours = serializers.IntegerField(
        min_value=1, max_value=720, required=False, default=4, help_text="How long the test share has to find a winner."
    )
    experiment_decide = serializers.ChoiceField(
        choices=["sequential", "window_end"],
        required=False,
        default="sequential",
        help_text="sequential: as soon as a winner is significant; window_end: one look at the window's end.",
    )
    experiment_fallback = serializers.ChoiceField(
        choices=["best_observed", "variant"],
        required=False,
        default="best_observed",
        help_text="Sent to the rest when nothing is significant by the window's end.",
    )
    experiment_fallback_variant = serializers.CharField(
        max_length=100, required=False, allow_blank=True, default="", help_text="The variant's name (fallback variant)."
    )
    trigger_event = serializers.CharField(
        max_length=100, required=False, allow_blank=True, default="", help_text="Triggered campaigns: the event type."
    )
    trigger_conditions = serializers.JSONField(
        required=False, allow_null=True, default=None, help_text='e.g. {"property": "total", "op": "gt", "value": 50}'
    )
    trigger_delay_seconds = serializers.IntegerField(min_value=0, max_value=30 * 24 * 3600, required=False, default=0)
    quiet_hours_start = serializers.TimeField(required=False, allow_null=True, default=None)
    quiet_hours_end = serializers.TimeField(required=False, allow_null=True, default=None)
    quiet_hours_policy = serializers.ChoiceField(choices=["defer", "skip"], required=False, default="defer")
    frequency_limit = serializers.ChoiceField(
        choices=["none", "1h", "24h", "7d", "30d", "ever"], required=False, default="none"
    )
    variants = VariantSerializer(many=True, required=False, max_length=MAX_VARIANTS, min_length=1)
    audience = AudienceSerializer(required=False)
    tracking_enabled = serializers.BooleanField(required=False, default=True)
    seed_emails = serializers.ListField(child=serializers.EmailField(), required=False, default=list, max_length=20)
    seed_phones = serializers.ListField(
        child=serializers.CharField(max_length=32),
        required=False,
        default=list,
        max_length=20,
        help_text="E.164 phones that receive SMS and WhatsApp test sends (and seed copies).",
    )
    seed_copy_every_send = serializers.BooleanField(required=False, default=False)
    sms_allow_multipart = serializers.BooleanField(
        required=False, default=False, help_text="Allow SMS of up to 6 parts (153 GSM-7 / 67 UCS-2 characters each)."
    )

    def validate_name(self, value: str) -> str:
        value = value.strip()
        if not value:
            raise serializers.ValidationError("This field may not be blank.")
        return value


class ScheduleSerializer(serializers.Serializer):
    """One-time: `scheduled_at` (an offset, or a wall-clock time in `timezone`). Recurring: `recurrence` daily /
    weekly / monthly with `time` (and `weekdays` or `day_of_month`), or `cron` with a five-field expression;
    `timezone` (IANA, default the organisation's), optional `starts_at` / `ends_at`."""

    scheduled_at = serializers.CharField(
        required=False,
        help_text="When to send once (ISO 8601); at least 5 minutes ahead. Without an offset it is read in timezone.",
    )
    timezone = serializers.CharField(required=False, allow_blank=True, help_text="IANA name, e.g. Europe/Paris.")
    recurrence = serializers.ChoiceField(choices=Recurrence.choices, required=False)
    time = serializers.CharField(required=False, help_text="HH:MM, for daily, weekly and monthly schedules.")
    weekdays = serializers.ListField(child=serializers.CharField(), required=False, help_text="For weekly: mon … sun.")
    day_of_month = serializers.IntegerField(required=False, min_value=1, max_value=31)
    cron = serializers.CharField(required=False, help_text="For recurrence=cron: minute hour day month weekday.")
    starts_at = serializers.CharField(required=False)
    ends_at = serializers.CharField(required=False)


class HistoryEntrySerializer(serializers.Serializer):
    at = serializers.DateTimeField()
    actor = serializers.CharField()
    action = serializers.CharField()
    changes = serializers.DictField()


class PreviewRequestSerializer(serializers.Serializer):
    channel = serializers.ChoiceField(choices=Channel.choices)
    variant = serializers.CharField(required=False, allow_blank=True, help_text="Name or id; default the first.")
    contact_id = serializers.IntegerField(required=False, help_text="Default: the first contact of the audience.")
    event_id = serializers.CharField(
        required=False,
        max_length=200,
        help_text="Triggered campaigns: preview with this stored event (the sender's id). Default: the contact's"
        " latest event of the trigger type, else the organisation's, else a labelled example.",
    )


class TestSendSerializer(serializers.Serializer):
    channel = serializers.ChoiceField(
        choices=["email", "sms", "whatsapp"], required=False, default="email", help_text="Default: email."
    )
    recipients = serializers.ListField(child=serializers.CharField(max_length=254), required=False, max_length=20)
    variant = serializers.CharField(required=False, allow_blank=True)
    contact_id = serializers.IntegerField(required=False)


class VariantCloneSerializer(serializers.Serializer):
    variant = serializers.CharField(help_text="Name or id of the variant to copy.")
    name = serializers.CharField(required=False, allow_blank=True, max_length=100)
