from __future__ import annotations

import uuid
from datetime import datetime, timedelta
from decimal import Decimal

from django.conf import settings
from django.contrib.postgres.fields import ArrayField
from django.contrib.postgres.indexes import GinIndex, OpClass
from django.core.validators import MaxValueValidator, MinValueValidator
from django.db import models
from django.db.models.functions import Cast, Lower, Upper
from django.db.models.indexes import Index
from simple_history.models import HistoricalRecords

from audiences.history import HistoryActorMixin
from audiences.models import Organisation, Segment


class CampaignType(models.TextChoices):
    SCHEDULED = "scheduled", "Scheduled"
    TRIGGERED = "triggered", "Triggered"


class CampaignStatus(models.TextChoices):
    DRAFT = "draft", "Draft"
    SCHEDULED = "scheduled", "Scheduled"
    ACTIVE = "active", "Active"
    RUNNING = "running", "Running"
    PAUSED = "paused", "Paused"
    COMPLETED = "completed", "Completed"
    CANCELLED = "cancelled", "Cancelled"


class Channel(models.TextChoices):
    EMAIL = "email", "Email"
    SMS = "sms", "SMS"
    WHATSAPP = "whatsapp", "WhatsApp"
    IN_APP = "in_app", "In-app"
    WEBHOOK = "webhook", "Webhook"


class Recurrence(models.TextChoices):
    NONE = "none", "Once"
    DAILY = "daily", "Daily"
    WEEKLY = "weekly", "Weekly"
    MONTHLY = "monthly", "Monthly"
    CRON = "cron", "Custom (cron)"


class AudienceCombine(models.TextChoices):
    AND = "and", "in all of the segments"
    OR = "or", "in any of the segments"


LIVE = models.Q(deleted_at__isnull=True)


class Campaign(models.Model):
    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    organisation = models.ForeignKey(Organisation, on_delete=models.CASCADE, related_name="campaigns")
    name = models.CharField(max_length=200)
    description = models.TextField(blank=True, max_length=5000)
    type = models.CharField(max_length=16, choices=CampaignType.choices, default=CampaignType.SCHEDULED)
    status = models.CharField(max_length=16, choices=CampaignStatus.choices, default=CampaignStatus.DRAFT)
    channels = ArrayField(models.CharField(max_length=16, choices=Channel.choices), default=list, blank=True)
    owner = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="owned_campaigns",
    )

    # When a scheduled campaign runs next (UTC). For a recurring campaign it is the next occurrence of the cron
    # expression in schedule_timezone, moved on after every run.
    scheduled_at = models.DateTimeField(null=True, blank=True)
    # The zone the marketer chose the time in (empty: the organisation's); recurring times are wall-clock times
    # there, so "9:00 daily" stays 9:00 across daylight-saving changes.
    schedule_timezone = models.CharField(max_length=64, blank=True, default="")
    recurrence = models.CharField(max_length=8, choices=Recurrence.choices, default=Recurrence.NONE)
    # Five-field cron (minute hour day-of-month month day-of-week) for every recurring kind; daily/weekly/monthly
    # are written as cron too, so one evaluator decides every occurrence.
    cron_expression = models.CharField(max_length=120, blank=True, default="")
    recurrence_ends_at = models.DateTimeField(null=True, blank=True)

    # Audience: included segments combined with AND/OR, an optional inline rule tree (ANDed with them), excluded
    # segments, and a holdout share kept as a control group. Resolved when the campaign runs, not when saved.
    audience_segments = models.ManyToManyField(Segment, through="CampaignSegment", related_name="campaigns", blank=True)
    audience_combine = models.CharField(max_length=3, choices=AudienceCombine.choices, default=AudienceCombine.OR)
    audience_rules = models.JSONField(null=True, blank=True)
    holdout_percent = models.DecimalField(
        max_digits=4,
        decimal_places=2,
        default=Decimal("0"),
        validators=[MinValueValidator(Decimal("0")), MaxValueValidator(Decimal("20"))],
    )

    # Open and click tracking (links rewritten, pixel added); off for privacy-sensitive campaigns.
    tracking_enabled = models.BooleanField(default=True)
    # Test sends go to these addresses and phones (E.164); with seed_copy_every_send they also get a copy of each
    # variant every time a run sends (one copy per variant and channel per run, not one per recipient).
    seed_emails = ArrayField(models.EmailField(), default=list, blank=True)
    seed_phones = ArrayField(models.CharField(max_length=16), default=list, blank=True)
    seed_copy_every_send = models.BooleanField(default=False)
    # SMS longer than one part (160 GSM-7 / 70 UCS-2 characters) are refused unless this allows up to 6 parts.
    sms_allow_multipart = models.BooleanField(default=False)

    # How the built-in sandbox provider behaves for this campaign (latency, outcome and engagement rates per
    # variant); empty uses settings.SANDBOX_PROVIDER. Only the sandbox reads it.
    sandbox_profile = models.JSONField(default=dict, blank=True)

    # Marketing messages count against the organisation's frequency caps; transactional ones (receipts, password
    # resets) never do, and a marketing campaign may opt out explicitly.
    category = models.CharField(
        max_length=16, choices=[("marketing", "Marketing"), ("transactional", "Transactional")], default="marketing"
    )
    bypass_frequency_cap = models.BooleanField(default=False)

    # Conversions: an event of this type from a recipient within `attribution_days` of the campaign's last
    # message to them counts as the campaign's conversion (last touch), with the event's `value` or `revenue`.
    conversion_event = models.CharField(max_length=100, blank=True, default="")
    attribution_days = models.PositiveSmallIntegerField(
        default=7, validators=[MinValueValidator(1), MaxValueValidator(30)], help_text="1 to 30 days."
    )
    # Which of the contact's messages in the window get the credit (analytics.services.CONVERSION_SQL).
    attribution_model = models.CharField(
        max_length=16,
        choices=[("last_touch", "Last touch"), ("first_touch", "First touch"), ("linear", "Linear")],
        default="last_touch",
    )

    # Auto-winner (analytics.autowinner): while the campaign runs, a sequential test valid under repeated looks
    # compares the variants on this metric and, once significant, sends the rest to the winner.
    auto_winner_enabled = models.BooleanField(default=False)
    auto_winner_metric = models.CharField(
        max_length=16,
        choices=[("open", "Open rate (people)"), ("click", "Click rate (people)"), ("conversion", "Conversion rate")],
        default="click",
    )
    auto_winner_level = models.PositiveSmallIntegerField(choices=[(90, "90 %"), (95, "95 %"), (99, "99 %")], default=95)
    auto_winner_min_sample = models.PositiveIntegerField(
        default=1000, validators=[MinValueValidator(100)], help_text="Delivered messages per variant before deciding."
    )
    # The test share (analytics.autowinner): with the auto-winner on, a one-time campaign first sends to this
    # percentage of its audience, split across the variants; the winner then goes to everyone else. 0 sends the
    # whole audience split across the variants, the winner taking over what is still queued once it is known.
    experiment_test_percent = models.PositiveSmallIntegerField(
        default=0, validators=[MaxValueValidator(90)], help_text="0 (no test share) to 90 % of the audience."
    )
    # How long the test share has, from its first message, before the fallback decides.
    experiment_window_hours = models.PositiveSmallIntegerField(
        default=4, validators=[MinValueValidator(1), MaxValueValidator(720)], help_text="1 to 720 hours."
    )
    experiment_decide = models.CharField(
        max_length=16,
        choices=[
            ("sequential", "As soon as a winner is significant (sequential test)"),
            ("window_end", "At the end of the window (one look)"),
        ],
        default="sequential",
    )
    # No significant winner by the window's end: the variant with the best observed rate, or a chosen one.
    experiment_fallback = models.CharField(
        max_length=16,
        choices=[("best_observed", "The best observed variant"), ("variant", "A chosen variant")],
        default="best_observed",
    )
    experiment_fallback_variant = models.CharField(
        max_length=100, blank=True, default="", help_text="The chosen variant's name (fallback 'variant')."
    )
    # Allocations in force over time, recorded once they change after the campaign has sent: [{"at": iso time,
    # "allocation": {variant id: percent}}]. While it has entries, contacts already assigned keep their variant
    # (delivery.assignment) and the sample-ratio check weighs each period's fresh assignments by its allocation.
    allocation_history = models.JSONField(default=list, blank=True)

    # Triggered campaigns: the event that fires them, conditions on its properties, a delay, quiet hours in the
    # recipient's timezone (else the organisation's default) with what to do in them, and a per-contact limit.
    trigger_event = models.CharField(max_length=100, blank=True, default="")
    trigger_conditions = models.JSONField(null=True, blank=True)
    trigger_delay_seconds = models.PositiveIntegerField(
        default=0, validators=[MaxValueValidator(30 * 24 * 3600)], help_text="0 seconds to 30 days."
    )
    quiet_hours_start = models.TimeField(null=True, blank=True)
    quiet_hours_end = models.TimeField(null=True, blank=True)
    quiet_hours_policy = models.CharField(
        max_length=8, choices=[("defer", "Send when quiet hours end"), ("skip", "Skip the send")], default="defer"
    )
    frequency_limit = models.CharField(
        max_length=8,
        choices=[
            ("none", "No limit"),
            ("1h", "Once per hour"),
            ("24h", "Once per 24 hours"),
            ("7d", "Once per 7 days"),
            ("30d", "Once per 30 days"),
            ("ever", "Once ever"),
        ],
        default="none",
    )

    # Per-campaign throttle; empty inherits the organisation's default.
    messages_per_minute = models.PositiveIntegerField(null=True, blank=True, validators=[MinValueValidator(1)])
    messages_per_hour = models.PositiveIntegerField(null=True, blank=True, validators=[MinValueValidator(1)])
    # When recipients may be sent to, in each recipient's own timezone (the organisation's when they have none):
    # a daily window (may cross midnight), weekends skipped, or a fixed local time ("9:00 wherever they are").
    send_window_start = models.TimeField(null=True, blank=True)
    send_window_end = models.TimeField(null=True, blank=True)
    skip_weekends = models.BooleanField(default=False)
    local_send_time = models.TimeField(null=True, blank=True)

    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)
    status_changed_at = models.DateTimeField(null=True, blank=True)
    paused_at = models.DateTimeField(null=True, blank=True)
    paused_by = models.CharField(max_length=200, blank=True)

    deleted_at = models.DateTimeField(null=True, blank=True)
    deleted_by = models.CharField(max_length=200, blank=True)

    history = HistoricalRecords(bases=[HistoryActorMixin])

    class Meta:
        ordering = ["-created_at", "-id"]
        constraints = [
            models.UniqueConstraint(
                models.F("organisation"), Lower("name"), condition=LIVE, name="campaign_unique_live_name"
            ),
            models.CheckConstraint(condition=models.Q(status__in=CampaignStatus.values), name="campaign_status_valid"),
            models.CheckConstraint(condition=models.Q(type__in=CampaignType.values), name="campaign_type_valid"),
            models.CheckConstraint(
                condition=~models.Q(status=CampaignStatus.SCHEDULED) | models.Q(scheduled_at__isnull=False),
                name="campaign_scheduled_has_time",
            ),
            models.CheckConstraint(
                condition=models.Q(holdout_percent__gte=0, holdout_percent__lte=20), name="campaign_holdout_range"
            ),
            models.CheckConstraint(
                condition=models.Q(experiment_test_percent__lte=90), name="campaign_experiment_test_percent_range"
            ),
            models.CheckConstraint(
                condition=models.Q(send_window_start__isnull=True, send_window_end__isnull=True)
                | models.Q(send_window_start__isnull=False, send_window_end__isnull=False),
                name="campaign_send_window_both_or_neither",
            ),
        ]
        indexes = [
            # Each list ordering is (column, id) so pages are stable; one index serves both directions by scanning
            # it backwards, except scheduled_at, which is nullable and sorts NULLS LAST both ways.
            Index(fields=["organisation", "created_at", "id"], condition=LIVE, name="campaign_live_created_idx"),
            Index(fields=["organisation", "name", "id"], condition=LIVE, name="campaign_live_name_idx"),
            Index(
                models.F("organisation"),
                models.F("scheduled_at").asc(nulls_last=True),
                models.F("id"),
                condition=LIVE,
                name="campaign_live_sched_asc_idx",
            ),
            Index(
                models.F("organisation"),
                models.F("scheduled_at").desc(nulls_last=True),
                models.F("id").desc(),
                condition=LIVE,
                name="campaign_live_sched_desc_idx",
            ),
            Index(
                fields=["organisation", "status", "created_at", "id"], condition=LIVE, name="campaign_live_status_idx"
            ),
            Index(fields=["organisation", "type", "created_at", "id"], condition=LIVE, name="campaign_live_type_idx"),
            # Case-insensitive name-prefix search: matches Django's `UPPER(name::text) LIKE UPPER('abc%')`.
            Index(
                models.F("organisation"),
                OpClass(Upper(Cast("name", models.TextField())), name="text_pattern_ops"),
                name="campaign_name_prefix_idx",
            ),
            Index(fields=["organisation", "-deleted_at"], condition=~LIVE, name="campaign_deleted_idx"),
            Index(fields=["deleted_at"], condition=~LIVE, name="campaign_purge_idx"),
            GinIndex(fields=["channels"], name="campaign_channels_gin"),
            # The engine's safety net polls this for scheduled campaigns whose time has come.
            Index(fields=["scheduled_at"], condition=LIVE & models.Q(status="scheduled"), name="campaign_due_idx"),
        ]

    def __str__(self) -> str:
        return self.name

    @property
    def is_deleted(self) -> bool:
        return self.deleted_at is not None

    @property
    def has_send_rules(self) -> bool:
        """Whether recipients' local time decides when they may be sent to."""
        return bool(self.send_window_start is not None or self.skip_weekends or self.local_send_time is not None)

    def test_window_end(self, test_share_started_at: datetime) -> datetime:
        """When the test share's window ends, counted from its first message."""
        return test_share_started_at + timedelta(hours=self.experiment_window_hours)

    @property
    def test_share_applies(self) -> bool:
        """Whether a run of this campaign starts with the test share: the auto-winner on with a share, a one-time
        campaign (a recurring or triggered one has no "rest of the audience" to wait for), two variants to test."""
        return bool(
            self.auto_winner_enabled
            and self.experiment_test_percent
            and self.type == CampaignType.SCHEDULED
            and self.recurrence == Recurrence.NONE
            and self.variants.filter(is_control=False).count() >= 2
        )


class SegmentRole(models.TextChoices):
    INCLUDE = "include", "Include"
    EXCLUDE = "exclude", "Exclude"


class CampaignSegment(models.Model):
    campaign = models.ForeignKey(Campaign, on_delete=models.CASCADE, related_name="segment_links")
    segment = models.ForeignKey(Segment, on_delete=models.PROTECT, related_name="campaign_links")
    role = models.CharField(max_length=8, choices=SegmentRole.choices)

    history = HistoricalRecords(bases=[HistoryActorMixin])

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["campaign", "segment"], name="campaign_segment_unique"),
        ]

    def __str__(self) -> str:
        return f"{self.campaign} {self.role}s {self.segment}"


class Variant(models.Model):
    """One version of a campaign's content. Every campaign has at least one; allocations sum to 100."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    campaign = models.ForeignKey(Campaign, on_delete=models.CASCADE, related_name="variants")
    name = models.CharField(max_length=100)
    position = models.PositiveSmallIntegerField(default=0)
    allocation_percent = models.PositiveSmallIntegerField(
        default=100, validators=[MinValueValidator(0), MaxValueValidator(100)]
    )
    is_control = models.BooleanField(default=False, help_text="Control recipients are measured but sent nothing.")
    # Content per channel, keyed by channel: {"email": {"subject": ..., "html": ...}, "sms": {"body": ...}}.
    content = models.JSONField(default=dict, blank=True)

    history = HistoricalRecords(bases=[HistoryActorMixin])

    class Meta:
        ordering = ["position", "name"]
        constraints = [
            models.UniqueConstraint(fields=["campaign", "name"], name="variant_unique_name"),
            models.CheckConstraint(
                condition=models.Q(allocation_percent__gte=0, allocation_percent__lte=100),
                name="variant_allocation_range",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.campaign} / {self.name}"


class ContentTemplate(models.Model):
    """A reusable piece of channel content ("start from template"), the embedded isA_Creative library."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    organisation = models.ForeignKey(Organisation, on_delete=models.CASCADE, related_name="content_templates")
    name = models.CharField(max_length=200)
    description = models.TextField(blank=True, default="", max_length=2000)
    channel = models.CharField(max_length=16, choices=Channel.choices)
    content = models.JSONField(default=dict)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    history = HistoricalRecords(bases=[HistoryActorMixin])

    class Meta:
        ordering = ["channel", "name"]
        constraints = [
            models.UniqueConstraint(
                models.F("organisation"), models.F("channel"), Lower("name"), name="content_template_unique_name"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.name} ({self.channel})"
