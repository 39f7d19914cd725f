"""Runs and their messages. PostgreSQL is the source of truth for every message; Redis only carries work."""

from __future__ import annotations

import uuid

from django.db import models
from django.db.models.functions import Lower

from audiences.models import Contact, Organisation
from audiences.pii import EncryptedTextField
from campaigns.models import Campaign, Channel, Variant


class Run(models.Model):
    """One execution of a campaign (a recurring campaign has many), with its own audience snapshot and counters."""

    class Status(models.TextChoices):
        PENDING = "pending", "Pending"
        FANNING_OUT = "fanning_out", "Preparing recipients"
        READY = "ready", "Ready to send"
        SENDING = "sending", "Sending"
        PAUSED = "paused", "Paused"
        COMPLETED = "completed", "Completed"
        CANCELLED = "cancelled", "Cancelled"
        FAILED = "failed", "Failed"

    class Trigger(models.TextChoices):
        MANUAL = "manual", "Sent now"
        SCHEDULE = "schedule", "Schedule"
        EVENT = "event", "Events"  # a triggered campaign's standing run, open while the campaign is active

    ACTIVE_STATUSES = (Status.PENDING, Status.FANNING_OUT, Status.READY, Status.SENDING, Status.PAUSED)

    class Phase(models.TextChoices):
        WHOLE = "", "Whole audience"
        TEST = "test", "Test share"  # the auto-winner's test share, split across the variants
        WINNER = "winner", "Winner to the rest"  # everyone the test share left out, sent the decided winner

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    organisation = models.ForeignKey(Organisation, on_delete=models.CASCADE, related_name="runs")
    campaign = models.ForeignKey(Campaign, on_delete=models.CASCADE, related_name="runs")
    number = models.PositiveIntegerField()
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.PENDING)
    trigger = models.CharField(max_length=16, choices=Trigger.choices, default=Trigger.MANUAL)
    phase = models.CharField(max_length=8, choices=Phase.choices, blank=True, default="", db_default="")
    # The occurrence this run is for (a schedule's time); a repeated alarm for the same occurrence starts nothing.
    scheduled_for = models.DateTimeField(null=True, blank=True)
    audience_count = models.PositiveIntegerField(default=0)
    holdout_count = models.PositiveIntegerField(default=0)
    message_count = models.PositiveIntegerField(default=0)
    control_count = models.PositiveIntegerField(default=0)
    # Recipients left out, by reason: {"no_email": 12, "no_phone": 40, …}.
    excluded = models.JSONField(default=dict, blank=True)
    # Progress, added to in the same transaction that records each batch, so it never disagrees with the rows.
    sent_count = models.PositiveIntegerField(default=0)
    delivered_count = models.PositiveIntegerField(default=0)
    bounced_count = models.PositiveIntegerField(default=0)
    failed_count = models.PositiveIntegerField(default=0)
    skipped_count = models.PositiveIntegerField(default=0)
    cancelled_count = models.PositiveIntegerField(default=0)
    created_at = models.DateTimeField(auto_now_add=True)
    fanned_out_at = models.DateTimeField(null=True, blank=True)
    started_sending_at = models.DateTimeField(null=True, blank=True)
    last_progress_at = models.DateTimeField(null=True, blank=True)
    paused_at = models.DateTimeField(null=True, blank=True)
    paused_by = models.CharField(max_length=200, blank=True, default="")
    finished_at = models.DateTimeField(null=True, blank=True)
    status_reason = models.CharField(max_length=500, blank=True, default="")
    # A run whose audience service failed at its start waits, pending, since waiting_since, and is prepared again
    # by the pump at retry_at (backoff over wait_attempts); delivery.runs.run_wait_for_audience.
    waiting_since = models.DateTimeField(null=True, blank=True)
    retry_at = models.DateTimeField(null=True, blank=True)
    wait_attempts = models.PositiveIntegerField(default=0, db_default=0)

    class Meta:
        ordering = ["-created_at"]
        constraints = [
            models.UniqueConstraint(fields=["campaign", "number"], name="run_unique_number"),
            models.UniqueConstraint(
                fields=["campaign", "scheduled_for"],
                condition=models.Q(scheduled_for__isnull=False),
                name="run_unique_occurrence",
            ),
            # One rest-of-the-audience run per campaign, however often the decision is looked at.
            models.UniqueConstraint(fields=["campaign"], condition=models.Q(phase="winner"), name="run_unique_winner"),
        ]
        indexes = [
            models.Index(
                fields=["status"],
                condition=models.Q(status__in=["pending", "fanning_out", "ready", "sending"]),
                name="run_active_idx",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.campaign} run {self.number}"

    @property
    def done_count(self) -> int:
        return self.sent_count + self.failed_count + self.skipped_count + self.cancelled_count

    @property
    def remaining_count(self) -> int:
        return max(0, self.message_count - self.done_count)

    @property
    def progress_percent(self) -> float:
        return 100.0 if not self.message_count else round(100.0 * self.done_count / self.message_count, 1)


class Message(models.Model):
    """One recipient on one channel in one run. (run, contact, channel) is the idempotency key: fan-out can be
    repeated without duplicates, and the same key goes to providers that deduplicate."""

    class Status(models.TextChoices):
        QUEUED = "queued", "Queued"
        HOLDOUT = "holdout", "Held out"
        CONTROL = "control", "Control group"
        SENDING = "sending", "Sending"
        SENT = "sent", "Sent"
        DELIVERED = "delivered", "Delivered"
        BOUNCED = "bounced", "Bounced"
        FAILED = "failed", "Failed"
        CANCELLED = "cancelled", "Cancelled"
        SKIPPED = "skipped", "Skipped"

    id = models.BigAutoField(primary_key=True)
    # The run reference is not a database FK either: a per-row RI check costs seconds per million rows at fan-out.
    # Runs are deleted with their messages by delivery services, not by cascades.
    run = models.ForeignKey(Run, on_delete=models.DO_NOTHING, related_name="messages", db_constraint=False)
    # No database-level FK checks on contact and variant: fan-out writes millions of rows at once and both are known
    # to exist (they come from the same statement's join). Deleting contacts goes through services that clean up.
    contact = models.ForeignKey(Contact, on_delete=models.DO_NOTHING, related_name="+", db_constraint=False)
    channel = models.CharField(max_length=16, choices=Channel.choices)
    variant = models.ForeignKey(Variant, on_delete=models.DO_NOTHING, related_name="+", db_constraint=False)
    # The contact kept the variant of an earlier message after the allocations changed (delivery.assignment).
    variant_kept = models.BooleanField(default=False, db_default=False)
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.QUEUED)
    # A triggered campaign sends to the same contact once per matching event: the event's id is part of the key.
    trigger_key = models.CharField(max_length=200, blank=True, default="", db_default="")
    due_at = models.DateTimeField()
    attempts = models.PositiveSmallIntegerField(default=0)
    provider_message_id = models.CharField(max_length=200, blank=True, default="")
    error = models.CharField(max_length=500, blank=True, default="")
    created_at = models.DateTimeField()
    sent_at = models.DateTimeField(null=True, blank=True)
    # An SMS's parts as the carrier bills them (campaigns.content.sms), measured on the rendered text when it is
    # sent or refused for its length; NULL for other channels and SMS not rendered yet.
    parts = models.PositiveSmallIntegerField(null=True, blank=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["run", "contact", "channel", "trigger_key"], name="message_idempotency_key"
            ),
        ]
        indexes = [
            # Workers claim a run's due messages from this (SELECT … FOR UPDATE SKIP LOCKED); only queued rows
            # are in it, so it shrinks as the run sends.
            models.Index(fields=["run", "due_at"], condition=models.Q(status="queued"), name="message_due_idx"),
            # Receipts from the notification_service find their message by its id. Only those channels are
            # indexed: email receipts carry our Message-ID (which holds the message id), and an index entry for
            # every sent email would cost every send.
            models.Index(
                fields=["provider_message_id"],
                condition=~models.Q(provider_message_id="") & models.Q(channel__in=["sms", "whatsapp"]),
                name="message_provider_id_idx",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.run_id}:{self.contact_id}:{self.channel}"

    @property
    def idempotency_key(self) -> str:
        return message_key(self.run_id, self.contact_id, self.channel, self.trigger_key)


def message_key(run_id: object, contact_id: object, channel: str, trigger_key: str = "") -> str:
    """The idempotency key handed to providers: (run, contact, channel), plus the event for triggered sends."""
    key = f"{run_id}:{contact_id}:{channel}"
    return f"{key}:{trigger_key}" if trigger_key else key


class SandboxHandoff(models.Model):
    """What the built-in sandbox provider was handed, by idempotency key: `handoffs` counts every call, so a
    message handed over twice is visible (the provider honours the key and delivers it once)."""

    idempotency_key = models.CharField(max_length=120, primary_key=True)
    run_id = models.UUIDField(db_index=True)
    channel = models.CharField(max_length=16)
    handoffs = models.PositiveIntegerField(default=1)
    outcome = models.CharField(max_length=16)
    first_at = models.DateTimeField()
    last_at = models.DateTimeField()

    def __str__(self) -> str:
        return self.idempotency_key


class ScheduledEngagement(models.Model):
    """Engagement a provider reports for later, until its time comes: the sandbox's simulated people open, click
    and buy minutes to hours after delivery. delivery.sandbox.scheduled_engagement_record_due (celery-beat) turns
    the due rows into analytics engagement events dated when they were due and deletes them, so no engagement is
    ever dated in the future and a report fills in as the time passes."""

    id = models.BigAutoField(primary_key=True)
    message_id = models.BigIntegerField()
    kind = models.CharField(max_length=16)
    due_at = models.DateTimeField()
    is_machine = models.BooleanField(default=False)
    value = models.DecimalField(max_digits=12, decimal_places=2, null=True, blank=True)
    # The engagement event's own dedupe key: recorded once, however often the recorder runs.
    dedupe_key = models.CharField(max_length=160, unique=True)

    class Meta:
        indexes = [models.Index(fields=["due_at"], name="scheduled_engagement_due_idx")]

    def __str__(self) -> str:
        return f"{self.kind} of message {self.message_id} at {self.due_at}"


class InboxMessage(models.Model):
    """An in-app message in a contact's inbox, as rendered when it was sent. Reading it counts as an open."""

    message_id = models.BigIntegerField(primary_key=True)
    organisation_id = models.UUIDField()
    contact_id = models.BigIntegerField()
    run_id = models.UUIDField()
    campaign_id = models.UUIDField()
    variant_id = models.UUIDField()
    title = models.CharField(max_length=500, blank=True, default="")
    body = models.TextField(blank=True, default="")
    action_url = models.CharField(max_length=2048, blank=True, default="")
    icon_url = models.CharField(max_length=2048, blank=True, default="")
    created_at = models.DateTimeField()
    read_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        indexes = [
            models.Index(fields=["organisation_id", "contact_id", "-created_at"], name="inbox_contact_idx"),
            models.Index(
                fields=["organisation_id", "contact_id"],
                condition=models.Q(read_at__isnull=True),
                name="inbox_unread_idx",
            ),
        ]

    def __str__(self) -> str:
        return f"inbox message {self.message_id}"


class TriggerDecision(models.Model):
    """How often each decision was taken for a triggered campaign: matched, filtered by condition, not in the
    audience, capped by the frequency limit, deferred or skipped for quiet hours, queued."""

    campaign = models.ForeignKey(Campaign, on_delete=models.CASCADE, related_name="trigger_decisions")
    decision = models.CharField(max_length=32)
    count = models.BigIntegerField(default=0)
    last_at = models.DateTimeField()

    class Meta:
        constraints = [models.UniqueConstraint(fields=["campaign", "decision"], name="trigger_decision_unique")]

    def __str__(self) -> str:
        return f"{self.campaign_id} {self.decision}: {self.count}"


class ContactSendCount(models.Model):
    """Marketing messages sent per contact, channel and local day, kept only for organisations with frequency
    caps (the cap check reads a few rows per contact instead of the message history)."""

    organisation_id = models.UUIDField()
    contact_id = models.BigIntegerField()
    channel = models.CharField(max_length=16)
    day = models.DateField(help_text="In the contact's timezone.")
    count = models.PositiveIntegerField(default=0)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["contact_id", "channel", "day"], name="contact_send_count_unique"),
        ]

    def __str__(self) -> str:
        return f"{self.contact_id} {self.channel} {self.day}: {self.count}"


class SeedSend(models.Model):
    """A message to a seed address or phone: a test send, or the copy of a variant that a run sends to the
    campaign's seeds. The idempotency key (run, variant, channel, address for copies) makes a repeated task send
    nothing twice."""

    class Kind(models.TextChoices):
        TEST = "test", "Test send"
        COPY = "copy", "Seed copy of a run"

    class Status(models.TextChoices):
        QUEUED = "queued", "Queued"
        SENT = "sent", "Sent"
        DELIVERED = "delivered", "Delivered"
        BOUNCED = "bounced", "Bounced"
        FAILED = "failed", "Failed"

    idempotency_key = models.CharField(max_length=200, unique=True)
    organisation = models.ForeignKey(Organisation, on_delete=models.CASCADE, related_name="+")
    campaign = models.ForeignKey(Campaign, on_delete=models.CASCADE, related_name="seed_sends")
    run = models.ForeignKey(Run, on_delete=models.CASCADE, null=True, blank=True, related_name="seed_sends")
    variant = models.ForeignKey(Variant, on_delete=models.SET_NULL, null=True, blank=True, related_name="+")
    kind = models.CharField(max_length=8, choices=Kind.choices)
    channel = models.CharField(max_length=16, choices=Channel.choices)
    address = models.CharField(max_length=254)
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.QUEUED)
    attempts = models.PositiveSmallIntegerField(default=0)
    next_attempt_at = models.DateTimeField(null=True, blank=True)
    provider_message_id = models.CharField(max_length=200, blank=True, default="")
    error = models.CharField(max_length=500, blank=True, default="")
    created_at = models.DateTimeField(auto_now_add=True)
    sent_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        indexes = [
            models.Index(fields=["campaign", "-created_at"], name="seed_send_campaign_idx"),
            models.Index(fields=["next_attempt_at"], condition=models.Q(status="queued"), name="seed_send_due_idx"),
        ]

    def __str__(self) -> str:
        return f"{self.kind} {self.channel} to {self.address}"


class SendingDomain(models.Model):
    """A domain an organisation sends email from, with the DKIM key pair that signs it (RFC 6376).

    The private key is encrypted at rest like contacts' addresses (audiences.pii); the public key is what the
    organisation publishes in DNS at `{selector}._domainkey.{domain}`. The last on-demand check of that record is
    kept so the console can say whether receivers will be able to verify the signatures."""

    class CheckStatus(models.TextChoices):
        UNCHECKED = "unchecked", "Not checked yet"
        VERIFIED = "verified", "Verified"
        MISMATCH = "mismatch", "Published key differs"
        MISSING = "missing", "No record published"
        ERROR = "error", "Check failed"

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    organisation = models.ForeignKey(Organisation, on_delete=models.CASCADE, related_name="sending_domains")
    # Lower-case ASCII (IDNA A-labels for internationalised names): the form DKIM's d= tag and DNS use.
    domain = models.CharField(max_length=253)
    selector = models.CharField(max_length=63)
    private_key = EncryptedTextField(help_text="PKCS#8 PEM, encrypted at rest.")
    # base64 of the DER SubjectPublicKeyInfo: the p= tag of the published record.
    public_key = models.TextField()
    created_at = models.DateTimeField(auto_now_add=True)
    key_created_at = models.DateTimeField()
    check_status = models.CharField(max_length=16, choices=CheckStatus.choices, default=CheckStatus.UNCHECKED)
    check_message = models.CharField(max_length=500, blank=True, default="")
    checked_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["domain"]
        constraints = [
            models.UniqueConstraint(fields=["organisation", "domain"], name="sending_domain_unique_per_organisation"),
            models.CheckConstraint(condition=models.Q(domain=Lower("domain")), name="sending_domain_lowercase"),
        ]

    def __str__(self) -> str:
        return self.domain

    @property
    def record_name(self) -> str:
        return f"{self.selector}._domainkey.{self.domain}"
