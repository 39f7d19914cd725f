"""Engagement events: what recipients did with a message (opened, clicked, converted…), attributed to the message,
run, campaign, variant, channel and contact. Written in bulk by the sandbox provider and the tracking endpoints."""

from __future__ import annotations

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
    # Opens and clicks by privacy proxies and link scanners rather than people.
    is_machine = models.BooleanField(default=False)
    value = models.DecimalField(max_digits=12, decimal_places=2, null=True, blank=True)
    # Repeats of the same event (a retried receipt, a replayed batch) are dropped on this key.
    dedupe_key = models.CharField(max_length=160, unique=True)

    class Meta:
        indexes = [
            models.Index(fields=["campaign_id", "occurred_at"], name="engagement_campaign_time_idx"),
            models.Index(fields=["run_id", "kind"], name="engagement_run_kind_idx"),
        ]

    def __str__(self) -> str:
        return f"{self.kind} of message {self.message_id}"
