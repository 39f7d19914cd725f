"""Engagement events: what recipients did with a message (opened, clicked, converted…), attributed to the message,
run, campaign, variant, channel and contact. Written in bulk by the sandbox provider and the tracking endpoints."""

from __future__ import annotations

from django.conf import settings
from django.db import models


class EngagementEvent(models.Model):
    class Kind(models.TextChoices):
        OPEN = "open", "Opened"
        CLICK = "click", "Clicked"
        CONVERSION = "conversion", "Converted"
        UNSUBSCRIBE = "unsubscribe", "Unsubscribed"
        COMPLAINT = "complaint", "Complained"

    id = models.BigAutoField(primary_key=True)
    # Plain ids, not FKs: events arrive in bulk and outlive nothing they point at (cleanup follows the messages).
    organisation_id = models.UUIDField()
    campaign_id = models.UUIDField()
    run_id = models.UUIDField()
    message_id = models.BigIntegerField()
    variant_id = models.UUIDField()
    contact_id = models.BigIntegerField()
    channel = models.CharField(max_length=16)
    kind = models.CharField(max_length=16, choices=Kind.choices)
    occurred_at = models.DateTimeField()
    # Opens and clicks by privacy proxies and link scanners rather than people; `classification` says which rule
    # decided (analytics.engagement.classify), e.g. "apple_mpp", "scanner_ua", "too_fast", "provider".
    is_machine = models.BooleanField(default=False)
    classification = models.CharField(max_length=32, blank=True, default="", db_default="")
    url = models.CharField(max_length=2048, blank=True, default="", db_default="", help_text="Clicks: the target.")
    value = models.DecimalField(max_digits=12, decimal_places=2, null=True, blank=True)
    # Conversions: the share of one conversion event this message is credited with (1 under last and first touch,
    # 1/n for each of n touches under linear), so a report counts each event once whatever the model. NULL on
    # other kinds; a conversion stored without it (the sandbox's) is one whole conversion.
    credit = models.DecimalField(max_digits=7, decimal_places=6, null=True, blank=True)
    # Repeats of the same event (a retried receipt, a replayed batch) are dropped on this key.
    dedupe_key = models.CharField(max_length=160, unique=True)

    class Meta:
        indexes = [
            models.Index(fields=["campaign_id", "occurred_at"], name="engagement_campaign_time_idx"),
            models.Index(fields=["run_id", "kind"], name="engagement_run_kind_idx"),
            # Revenue per recipient (analytics.experiments) reads a campaign's conversions only.
            models.Index(
                fields=["campaign_id", "message_id"],
                condition=models.Q(kind="conversion"),
                name="engagement_conversion_idx",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.kind} of message {self.message_id}"


class MetricDelta(models.Model):
    """Counts that a change added to a campaign's metrics, per run, variant, channel, minute and metric.

    Written by PostgreSQL triggers on delivery_message (status changes) and analytics_engagementevent (inserts),
    one aggregated row per key and statement, so every writer (sending, receipts, tracking, unsubscribes) is
    counted in its own transaction and reads never scan message rows. Append-only, so concurrent writers never
    wait on a shared counter row; analytics.services.metrics_compact folds old rows into one per key."""

    id = models.BigAutoField(primary_key=True)
    campaign_id = models.UUIDField()
    run_id = models.UUIDField()
    variant_id = models.UUIDField()
    channel = models.CharField(max_length=16)
    bucket = models.DateTimeField(help_text="The minute the change belongs to.")
    metric = models.CharField(max_length=32)
    count = models.BigIntegerField()
    amount = models.DecimalField(max_digits=16, decimal_places=2, default=0)
    # Conversion metrics: the summed credit (analytics.models.EngagementEvent.credit), i.e. conversion events
    # rather than credited touches; 0 for other metrics.
    credit = models.DecimalField(max_digits=20, decimal_places=6, default=0, db_default=0)
    created_at = models.DateTimeField(db_default=models.functions.Now())

    class Meta:
        indexes = [
            models.Index(fields=["campaign_id", "bucket"], name="metricdelta_campaign_idx"),
            models.Index(fields=["campaign_id", "created_at"], name="metricdelta_updated_idx"),
        ]

    def __str__(self) -> str:
        return f"{self.metric} {self.count:+d} at {self.bucket}"


class MessageFirst(models.Model):
    """The first open / click / conversion (and first human one) of each message: unique counts come from these
    rows being inserted once."""

    pk = models.CompositePrimaryKey("message_id", "kind")
    message_id = models.BigIntegerField()
    kind = models.CharField(max_length=24)

    def __str__(self) -> str:
        return f"{self.kind} of {self.message_id}"


class ExperimentDecision(models.Model):
    """The auto-winner's decision for a campaign (at most one): which variant won, on what numbers, and how many
    queued messages were moved to it."""

    id = models.BigAutoField(primary_key=True)
    campaign = models.OneToOneField("campaigns.Campaign", on_delete=models.CASCADE, related_name="experiment_decision")
    winner = models.ForeignKey("campaigns.Variant", on_delete=models.CASCADE, related_name="+")
    metric = models.CharField(max_length=16)
    level = models.DecimalField(max_digits=3, decimal_places=2)
    method = models.CharField(max_length=200)
    numbers = models.JSONField(default=dict)
    messages_switched = models.PositiveIntegerField(default=0)
    decided_at = models.DateTimeField(db_default=models.functions.Now())

    def __str__(self) -> str:
        return f"winner {self.winner_id} of {self.campaign_id}"


class Notice(models.Model):
    """An in-app notice for a console user (e.g. "variant B won"), shown until read."""

    id = models.BigAutoField(primary_key=True)
    organisation = models.ForeignKey("audiences.Organisation", on_delete=models.CASCADE, related_name="+")
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="notices")
    campaign = models.ForeignKey("campaigns.Campaign", null=True, on_delete=models.CASCADE, related_name="+")
    text = models.CharField(max_length=500)
    created_at = models.DateTimeField(db_default=models.functions.Now())
    read_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        indexes = [models.Index(fields=["user", "read_at"], name="notice_user_unread_idx")]

    def __str__(self) -> str:
        return self.text
