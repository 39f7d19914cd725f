from __future__ import annotations

from typing import Any

from django.conf import settings
from django.contrib.postgres.fields import ArrayField
from django.core.serializers.json import DjangoJSONEncoder
from django.db import models
from simple_history.models import HistoricalRecords

from audiences.history import HistoryActorMixin
from audiences.models import ApiKey, Organisation
from audiences.pii import HASH_PREFIX, EncryptedTextField, pii_hash


class AuditLogEntry(models.Model):
    """One state-changing operation: who, what, on which object, when. Append-only.

    Written in the same transaction as the change it records, so there is never a change without its entry
    (or an entry for a change that rolled back).
    """

    organisation = models.ForeignKey(Organisation, on_delete=models.CASCADE, related_name="audit_log")
    occurred_at = models.DateTimeField(auto_now_add=True, db_index=True)
    action = models.CharField(max_length=64, help_text="<entity>.<verb>, e.g. campaign.clone")
    target_type = models.CharField(max_length=64)
    target_id = models.CharField(max_length=64)
    target_repr = models.CharField(max_length=300, blank=True)
    actor_label = models.CharField(max_length=200)
    actor_user = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    actor_api_key = models.ForeignKey(ApiKey, null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    # The client's address (its real one behind a trusted proxy); empty for system and background work.
    ip_address = models.GenericIPAddressField(null=True, blank=True)
    details = models.JSONField(default=dict, blank=True, encoder=DjangoJSONEncoder)

    class Meta:
        ordering = ["-occurred_at", "-id"]
        indexes = [
            models.Index(fields=["organisation", "target_type", "target_id", "-occurred_at"], name="audit_target_idx"),
            models.Index(fields=["organisation", "-occurred_at"], name="audit_org_time_idx"),
        ]
        verbose_name_plural = "audit log entries"

    def __str__(self) -> str:
        return f"{self.occurred_at:%Y-%m-%d %H:%M:%S} {self.actor_label} {self.action} {self.target_repr}"


class ContactPreference(models.Model):
    """A contact's say over campaign messages. Fan-out leaves them out and sending re-checks just before hand-off,
    so a change stops messages already queued. Only contacts who said something have a row."""

    contact = models.OneToOneField(
        "audiences.Contact", primary_key=True, on_delete=models.CASCADE, related_name="preference"
    )
    organisation = models.ForeignKey(Organisation, on_delete=models.CASCADE, related_name="+")
    # Out of every campaign message on every channel.
    global_opt_out = models.BooleanField(default=False)
    # Unsubscribed (from a message's link or STOP): out of every marketing campaign.
    unsubscribed_at = models.DateTimeField(null=True, blank=True)
    # Channels the contact turned off, e.g. ["sms"].
    disabled_channels = ArrayField(models.CharField(max_length=16), default=list, blank=True)
    # Campaign categories the contact turned off ("marketing", "transactional"); campaigns declare theirs.
    disabled_categories = ArrayField(models.CharField(max_length=16), default=list, blank=True)
    # Personal quiet hours in the contact's timezone (the organisation's without one): marketing messages due
    # inside them wait until they end. Both or neither.
    quiet_hours_start = models.TimeField(null=True, blank=True)
    quiet_hours_end = models.TimeField(null=True, blank=True)
    updated_at = models.DateTimeField(auto_now=True)

    history = HistoricalRecords(bases=[HistoryActorMixin])

    class Meta:
        constraints = [
            models.CheckConstraint(
                condition=(
                    models.Q(quiet_hours_start__isnull=True, quiet_hours_end__isnull=True)
                    | models.Q(quiet_hours_start__isnull=False, quiet_hours_end__isnull=False)
                ),
                name="preference_quiet_hours_both_or_neither",
            ),
        ]

    def __str__(self) -> str:
        return f"preferences of contact {self.contact_id}"

    @property
    def blocks_everything(self) -> bool:
        return self.global_opt_out or self.unsubscribed_at is not None


class Suppression(models.Model):
    """An address nobody in the organisation may send to: hard bounces and complaints add themselves, people add
    others by hand or by import. Emails are stored lower-cased, phones in E.164."""

    class Reason(models.TextChoices):
        HARD_BOUNCE = "hard_bounce", "Hard bounce"
        COMPLAINT = "complaint", "Complaint"
        MANUAL = "manual", "Added by hand"
        IMPORT = "import", "Imported"
        # An erased contact's address, kept only as a keyed hash (audiences.pii) so it stays suppressed.
        ERASED = "erased", "Erased contact"

    organisation = models.ForeignKey(Organisation, on_delete=models.CASCADE, related_name="suppressions")
    # Encrypted at rest like contacts' addresses (audiences.pii); an erased contact's row holds only its hash.
    address = EncryptedTextField(hash_field="address_hash")
    # The keyed hash of the address (audiences.pii), matched against contacts' email_hash / phone_hash; for an
    # erased contact's row the address *is* this hash. One row per address and organisation.
    address_hash = models.CharField(max_length=66, blank=True, default="", db_default="")
    reason = models.CharField(max_length=16, choices=Reason.choices)
    note = models.CharField(max_length=500, blank=True, default="")
    created_at = models.DateTimeField(auto_now_add=True)

    history = HistoricalRecords(bases=[HistoryActorMixin])

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["organisation", "address_hash"], name="suppression_unique_address_hash")
        ]
        indexes = [
            # "Has this organisation erased anyone?" — asked by every send-time claim.
            models.Index(fields=["organisation"], condition=models.Q(reason="erased"), name="suppression_erased_idx"),
        ]

    def __str__(self) -> str:
        return f"{self.address} ({self.reason})"

    def save(self, *args: Any, **kwargs: Any) -> None:
        self.address_hash = self.address if self.address.startswith(HASH_PREFIX) else pii_hash(self.address)
        super().save(*args, **kwargs)


class Unsubscribe(models.Model):
    """One unsubscribe as it arrived: from which message (and so campaign, run, channel) when the link named one,
    how, and the reason if the recipient gave one. Plain ids for the delivery side: compliance never imports it."""

    class Source(models.TextChoices):
        PAGE = "page", "Unsubscribe page"
        ONE_CLICK = "one_click", "One-click (RFC 8058)"
        MAIL = "mail", "By mail (List-Unsubscribe mailto)"
        PREFERENCES = "preferences", "Preference centre"
        API = "api", "API"
        CONSOLE = "console", "Console"

    id = models.BigAutoField(primary_key=True)
    organisation = models.ForeignKey(Organisation, on_delete=models.CASCADE, related_name="+")
    # Nulled when the contact is erased; the row (and its counts) stays.
    contact = models.ForeignKey("audiences.Contact", null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    campaign_id = models.UUIDField(null=True, blank=True)
    run_id = models.UUIDField(null=True, blank=True)
    message_id = models.BigIntegerField(null=True, blank=True)
    channel = models.CharField(max_length=16, blank=True, default="")
    source = models.CharField(max_length=16, choices=Source.choices)
    reason = models.CharField(max_length=500, blank=True, default="")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        constraints = [
            # A replayed link or a one-click POST followed by the page records one unsubscribe per message.
            models.UniqueConstraint(
                fields=["contact", "message_id"], condition=models.Q(message_id__isnull=False), name="unsub_once"
            ),
        ]
        indexes = [
            models.Index(fields=["organisation", "campaign_id", "-created_at"], name="unsub_campaign_idx"),
        ]

    def __str__(self) -> str:
        return f"unsubscribe of contact {self.contact_id} ({self.source})"


class OutboxEvent(models.Model):
    """A consent change to push to account_service, written in the same transaction as the change (so none is
    lost or sent for a change that rolled back) and pushed by compliance.tasks with retries and backoff. The
    payload is the contact's whole state after the change, so pushes are idempotent and a late retry of an older
    state is recognisable by `sequence` (the event id)."""

    id = models.BigAutoField(primary_key=True)
    organisation = models.ForeignKey(Organisation, on_delete=models.CASCADE, related_name="+")
    contact_id = models.BigIntegerField()
    kind = models.CharField(max_length=32)
    payload = models.JSONField(encoder=DjangoJSONEncoder)
    created_at = models.DateTimeField(auto_now_add=True)
    attempts = models.PositiveIntegerField(default=0)
    next_attempt_at = models.DateTimeField()
    delivered_at = models.DateTimeField(null=True, blank=True)
    last_error = models.CharField(max_length=500, blank=True, default="")

    class Meta:
        indexes = [
            models.Index(
                fields=["next_attempt_at"], condition=models.Q(delivered_at__isnull=True), name="outbox_due_idx"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.kind} of contact {self.contact_id} ({'pushed' if self.delivered_at else 'pending'})"


class SendingHold(models.Model):
    """A channel and category the organisation may not send on for now — marketing email while its complaint rate
    is over the limit. Queued messages wait (the send-time claim defers them) until someone releases the hold."""

    organisation = models.ForeignKey(Organisation, on_delete=models.CASCADE, related_name="+")
    channel = models.CharField(max_length=16)
    category = models.CharField(max_length=16)
    reason = models.CharField(max_length=500)
    created_at = models.DateTimeField(auto_now_add=True)
    released_at = models.DateTimeField(null=True, blank=True)
    released_by = models.CharField(max_length=200, blank=True, default="")

    class Meta:
        ordering = ["-created_at"]
        constraints = [
            models.UniqueConstraint(
                fields=["organisation", "channel", "category"],
                condition=models.Q(released_at__isnull=True),
                name="sending_hold_one_active",
            ),
        ]

    def __str__(self) -> str:
        return f"hold on {self.category} {self.channel} ({'released' if self.released_at else 'active'})"


class ContactChannelActivity(models.Model):
    """When the contact last wrote to us on a channel (inbound SMS / WhatsApp): WhatsApp allows free-form messages
    only within 24 h of it, approved templates otherwise."""

    pk = models.CompositePrimaryKey("contact_id", "channel")
    contact = models.ForeignKey("audiences.Contact", on_delete=models.CASCADE, related_name="+")
    channel = models.CharField(max_length=16)
    last_inbound_at = models.DateTimeField()

    def __str__(self) -> str:
        return f"{self.contact_id} last wrote on {self.channel} at {self.last_inbound_at}"


class RunExclusion(models.Model):
    """Why one audience member of a run got no message (on one channel, or on any when `channel` is blank): the
    per-recipient half of the run's "run.fan_out" audit entry, which carries the counts. Written by fan-out in one
    INSERT … SELECT over the staged audience, in the same transaction; append-only. Recipients without an address
    for a channel are counted on the run only. Plain ids: compliance never imports delivery."""

    organisation = models.ForeignKey(Organisation, on_delete=models.CASCADE, related_name="+")
    run_id = models.UUIDField()
    campaign_id = models.UUIDField()
    # Nulled when the contact is erased; the reason stays for the auditor.
    contact_id = models.BigIntegerField(null=True)
    channel = models.CharField(max_length=16, blank=True, default="")
    reason = models.CharField(max_length=32)
    created_at = models.DateTimeField()

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["run_id", "contact_id", "channel"], name="run_exclusion_unique"),
        ]
        indexes = [
            models.Index(fields=["organisation", "run_id"], name="run_exclusion_run_idx"),
            models.Index(fields=["organisation", "contact_id"], name="run_exclusion_contact_idx"),
        ]

    def __str__(self) -> str:
        return f"run {self.run_id} contact {self.contact_id} {self.channel or 'all'}: {self.reason}"
