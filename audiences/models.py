"""The tenant and the people and machines that act inside it.

Organisations live in `audiences` because it is the base app every other one builds on (see STYLE.md §11).
"""

from __future__ import annotations

import secrets
import uuid
from typing import Any

from django.conf import settings
from django.contrib.postgres.fields import ArrayField
from django.contrib.postgres.indexes import HashIndex
from django.core.validators import MaxValueValidator, MinValueValidator, RegexValidator
from django.db import models
from django.db.models.functions import Lower, Mod
from django.db.models.lookups import Exact
from simple_history.models import HistoricalRecords
from timezone_field import TimeZoneField

from audiences.currencies import DEFAULT_CURRENCY, validate_currency
from audiences.history import HistoryActorMixin
from audiences.pii import EncryptedTextField, email_domain, pii_hash


class Role(models.TextChoices):
    ADMIN = "admin", "Admin"
    MARKETER = "marketer", "Marketer"
    ANALYST = "analyst", "Analyst"
    COMPLIANCE = "compliance", "Compliance officer"
    # API keys only: a delivery provider's or the notification_service's key, which may post receipts and inbound
    # messages and read in-app inboxes, and nothing else (audiences.permissions).
    PROVIDER = "provider", "Provider (receipts, inbound, inbox)"


# The roles a person can hold in an organisation (every role but the API-key-only provider).
MEMBER_ROLES = [(value, label) for value, label in Role.choices if value != Role.PROVIDER]


def new_webhook_secret() -> str:
    return secrets.token_urlsafe(32)


slug_validator = RegexValidator(r"^[a-z0-9](?:[a-z0-9-]{0,48}[a-z0-9])?$", "Use lowercase letters, digits and hyphens.")


class Organisation(models.Model):
    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    slug = models.CharField(max_length=50, unique=True, validators=[slug_validator])
    name = models.CharField(max_length=200)
    timezone = TimeZoneField(default="UTC", use_pytz=False)

    default_messages_per_minute = models.PositiveIntegerField(
        null=True, blank=True, validators=[MinValueValidator(1)], help_text="Empty means unlimited."
    )
    default_messages_per_hour = models.PositiveIntegerField(
        null=True, blank=True, validators=[MinValueValidator(1)], help_text="Empty means unlimited."
    )
    # Events for external ids we do not know: create the contact, or reject the event.
    unknown_event_contacts = models.CharField(
        max_length=8, choices=[("create", "Create the contact"), ("reject", "Reject the event")], default="create"
    )
    # Revenue (conversion values) is reported in this currency; reports print the code beside every amount.
    currency = models.CharField(
        max_length=3,
        default=DEFAULT_CURRENCY,
        db_default=DEFAULT_CURRENCY,
        validators=[validate_currency],
        help_text="ISO 4217 code of the currency conversion values are in, e.g. USD, EUR, GBP.",
    )
    # At most N marketing messages per contact per channel in D days, days counted in the contact's timezone:
    # {"email": {"count": 3, "days": 1}}. Checked just before each send.
    frequency_caps = models.JSONField(default=dict, blank=True)
    # Provider limits per channel shared by every campaign of the organisation, messages per minute:
    # {"email": 6000, "sms": 600}. A channel not listed is unlimited.
    channel_limits_per_minute = models.JSONField(default=dict, blank=True)
    default_quiet_hours_start = models.TimeField(null=True, blank=True)
    default_quiet_hours_end = models.TimeField(null=True, blank=True)

    sender_name = models.CharField(max_length=200, blank=True)
    sender_email = models.EmailField(blank=True)
    reply_to_email = models.EmailField(blank=True)
    verified_senders = ArrayField(
        models.EmailField(), default=list, blank=True, help_text="Other From addresses campaigns may use."
    )
    sms_sender_id = models.CharField(max_length=20, blank=True)
    postal_address = models.TextField(blank=True, help_text="Printed in the footer of every marketing email.")
    # The global control group: this share of the contacts (by the holdout's hash with the organisation's seed,
    # audiences.segments.global_control_condition) gets no marketing campaign at all, so the organisation can
    # measure the lift of all its marketing. 0 turns it off; raising or lowering it moves only the margin.
    global_control_percent = models.DecimalField(
        max_digits=4,
        decimal_places=2,
        default=0,
        validators=[MinValueValidator(0), MaxValueValidator(20)],
        help_text="Share of contacts (0-20 %) who receive no marketing campaign. 0: off.",
    )
    # Signs webhook requests (HMAC-SHA256 of the body) so receivers can verify they come from us.
    webhook_secret = models.CharField(max_length=64, default=new_webhook_secret, editable=False)

    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    history = HistoricalRecords(bases=[HistoryActorMixin])

    class Meta:
        ordering = ["name"]
        constraints = [
            models.CheckConstraint(
                condition=(
                    models.Q(default_quiet_hours_start__isnull=True, default_quiet_hours_end__isnull=True)
                    | models.Q(default_quiet_hours_start__isnull=False, default_quiet_hours_end__isnull=False)
                ),
                name="organisation_quiet_hours_both_or_neither",
            ),
            models.CheckConstraint(
                condition=models.Q(global_control_percent__gte=0, global_control_percent__lte=20),
                name="organisation_global_control_range",
            ),
        ]

    def __str__(self) -> str:
        return self.name


class Membership(models.Model):
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="memberships")
    organisation = models.ForeignKey(Organisation, on_delete=models.CASCADE, related_name="memberships")
    role = models.CharField(max_length=20, choices=MEMBER_ROLES, default=Role.MARKETER)
    created_at = models.DateTimeField(auto_now_add=True)

    history = HistoricalRecords(bases=[HistoryActorMixin])

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["user", "organisation"], name="membership_unique_user_organisation"),
        ]

    def __str__(self) -> str:
        return f"{self.user} in {self.organisation} ({self.role})"


class ApiKey(models.Model):
    """A secret that acts for an organisation. Only a SHA-256 of the key is stored.

    Keys carry 256 bits of randomness, so a fast hash is enough: there is nothing to brute-force the way a
    human password can be guessed, and authenticating every API call through PBKDF2 would cost ~100 ms.
    """

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    organisation = models.ForeignKey(Organisation, on_delete=models.CASCADE, related_name="api_keys")
    name = models.CharField(max_length=100)
    role = models.CharField(max_length=20, choices=Role.choices, default=Role.MARKETER)
    prefix = models.CharField(max_length=16, unique=True, editable=False)
    key_hash = models.CharField(max_length=64, unique=True, editable=False)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True)
    last_used_at = models.DateTimeField(null=True, blank=True, editable=False)
    revoked_at = models.DateTimeField(null=True, blank=True, editable=False)

    history = HistoricalRecords(bases=[HistoryActorMixin], excluded_fields=["last_used_at"])

    class Meta:
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return f"{self.name} ({self.prefix}…)"

    @property
    def is_active(self) -> bool:
        return self.revoked_at is None


# --- contacts: the user_360 view inside the monolith -----------------------------------------------------------


class Contact(models.Model):
    """A person an organisation can message. `external_id` is the organisation's own user id."""

    id = models.BigAutoField(primary_key=True)
    # No index of its own: the unique (organisation, external_id) index leads with it. No foreign-key constraint
    # either: PostgreSQL checks one with a query per inserted row, a quarter of a bulk import's database time.
    # Migration 0009 enforces the same rule with triggers instead, one set-based check per INSERT statement.
    organisation = models.ForeignKey(
        Organisation, on_delete=models.CASCADE, related_name="contacts", db_index=False, db_constraint=False
    )
    external_id = models.CharField(max_length=255)
    # Encrypted at rest (audiences.pii); look-ups go through the keyed hashes beside them.
    email = EncryptedTextField(blank=True, default="", hash_field="email_hash")
    phone = EncryptedTextField(blank=True, default="", hash_field="phone_hash", help_text="E.164, e.g. +447700900123")
    email_hash = models.CharField(max_length=66, blank=True, default="", db_default="")
    phone_hash = models.CharField(max_length=66, blank=True, default="", db_default="")
    email_domain = models.CharField(max_length=254, blank=True, default="", db_default="")
    first_name = models.CharField(max_length=150, blank=True, default="")
    last_name = models.CharField(max_length=150, blank=True, default="")
    timezone = models.CharField(max_length=64, blank=True, default="", help_text="IANA name, e.g. Europe/Paris")
    locale = models.CharField(max_length=35, blank=True, default="", help_text="BCP 47, e.g. en-GB")
    attributes = models.JSONField(default=dict, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["organisation", "external_id"], name="contact_unique_external_id"),
        ]
        indexes = [
            # Look-ups by keyed hash are equality only, and hashes are random: a btree over them takes a random
            # leaf page per new contact (a large index that stops fitting in memory), a hash index a small bucket.
            # Partial: contacts without the address are left out (queries say `<> ''`, or an equality implies it).
            HashIndex(fields=["email_hash"], condition=~models.Q(email_hash=""), name="contact_email_hash_idx"),
            HashIndex(fields=["phone_hash"], condition=~models.Q(phone_hash=""), name="contact_phone_hash_idx"),
            # A fixed 1 % sample for fast, stable audience estimates on large organisations: contacts whose id
            # *hashes* to 0 mod 100. Hashing matters: ids follow import order, so "id mod 100" would sample
            # periodically and be biased by any pattern in the file (a sorted CSV, a round-robin export).
            # Partial, so only the sampled 1 % of rows pay for it on insert.
            models.Index(
                fields=["organisation"],
                condition=models.Q(Exact(Mod(models.Func(models.F("id"), function="hashint8"), 100), 0)),
                name="contact_sample_idx",
            ),
        ]

    def __str__(self) -> str:
        return self.external_id

    def save(self, *args: Any, **kwargs: Any) -> None:
        # Bulk writes (audiences.contacts) compute these in the batch; single ORM saves keep them in step here.
        self.email = (self.email or "").strip().lower()
        self.email_hash = pii_hash(self.email)
        self.email_domain = email_domain(self.email)
        self.phone_hash = pii_hash(self.phone or "")
        update_fields = kwargs.get("update_fields")
        if update_fields is not None and ({"email", "phone"} & set(update_fields)):
            kwargs["update_fields"] = {*update_fields, "email_hash", "phone_hash", "email_domain"}
        super().save(*args, **kwargs)


class AttributeType(models.TextChoices):
    STRING = "string", "Text"
    NUMBER = "number", "Number"
    BOOLEAN = "boolean", "Yes/no"
    DATE = "date", "Date"
    LIST = "list", "List"


class ContactAttribute(models.Model):
    """The attribute catalogue: every attribute name seen on the organisation's contacts, its type and examples.

    Maintained set-based from each upsert batch; it feeds the segment builder and rule validation."""

    organisation = models.ForeignKey(Organisation, on_delete=models.CASCADE, related_name="contact_attributes")
    name = models.CharField(max_length=64)
    type = models.CharField(max_length=16, choices=AttributeType.choices)
    examples = models.JSONField(default=list, blank=True)
    first_seen_at = models.DateTimeField(auto_now_add=True)
    last_seen_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["name"]
        constraints = [
            models.UniqueConstraint(fields=["organisation", "name"], name="contact_attribute_unique_name"),
        ]

    def __str__(self) -> str:
        return f"{self.name} ({self.type})"


class ContactImport(models.Model):
    """A CSV import running in the background, with progress and a report of rejected rows."""

    class Status(models.TextChoices):
        PENDING = "pending", "Waiting"
        RUNNING = "running", "Importing"
        COMPLETED = "completed", "Completed"
        FAILED = "failed", "Failed"

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    organisation = models.ForeignKey(Organisation, on_delete=models.CASCADE, related_name="contact_imports")
    file = models.FileField(upload_to="imports/%Y/%m/")
    filename = models.CharField(max_length=255)
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.PENDING)
    total_rows = models.PositiveIntegerField(default=0)
    processed_rows = models.PositiveIntegerField(default=0)
    created_count = models.PositiveIntegerField(default=0)
    updated_count = models.PositiveIntegerField(default=0)
    rejected_count = models.PositiveIntegerField(default=0)
    rejected_report = models.TextField(blank=True, default="", help_text="CSV: row, external_id, reasons")
    error = models.TextField(blank=True, default="")
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return f"{self.filename} ({self.status})"

    @property
    def progress_percent(self) -> int:
        if not self.total_rows:
            return 100 if self.status == self.Status.COMPLETED else 0
        return min(100, round(100 * self.processed_rows / self.total_rows))


# --- segments -------------------------------------------------------------------------------------------------


class SegmentKind(models.TextChoices):
    RULES = "rules", "Rules"
    STATIC = "static", "Static list"
    EXTERNAL = "external", "External (isA_Data)"


class Segment(models.Model):
    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    organisation = models.ForeignKey(Organisation, on_delete=models.CASCADE, related_name="segments")
    name = models.CharField(max_length=200)
    description = models.TextField(blank=True, default="", max_length=2000)
    kind = models.CharField(max_length=16, choices=SegmentKind.choices, default=SegmentKind.RULES)
    rules = models.JSONField(null=True, blank=True, help_text="Rule tree, for rules segments.")
    external_query = models.TextField(blank=True, default="", help_text="The isA_Data query, for external segments.")
    # Or, for an external segment, the id of one of intelligent_query's pre-built segments, resolved when used.
    external_segment_id = models.CharField(max_length=200, blank=True, default="", db_default="")
    members_refreshed_at = models.DateTimeField(null=True, blank=True)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    history = HistoricalRecords(bases=[HistoryActorMixin])

    class Meta:
        ordering = ["name"]
        constraints = [
            models.UniqueConstraint(models.F("organisation"), Lower("name"), name="segment_unique_name"),
            models.CheckConstraint(
                condition=~models.Q(kind="rules") | models.Q(rules__isnull=False), name="segment_rules_present"
            ),
            # A pre-built segment is referenced once per organisation.
            models.UniqueConstraint(
                fields=["organisation", "external_segment_id"],
                condition=~models.Q(external_segment_id=""),
                name="segment_unique_prebuilt",
            ),
        ]

    def __str__(self) -> str:
        return self.name


class SegmentMember(models.Model):
    """Members of a static segment (uploaded ids) or the last resolution of an external one."""

    pk = models.CompositePrimaryKey("segment_id", "contact_id")
    segment = models.ForeignKey(Segment, on_delete=models.CASCADE, related_name="members")
    contact = models.ForeignKey(Contact, on_delete=models.CASCADE, related_name="+")

    class Meta:
        indexes = [models.Index(fields=["contact"], name="segment_member_contact_idx")]

    def __str__(self) -> str:
        return f"{self.contact_id} in {self.segment_id}"


class Event(models.Model):
    """Something a contact did, as the event API (the embedded event_service) received it. Segments count them
    ("did X at least N times in D days"), triggers react to them, analytics attributes conversions to them.

    Kept lean for tens of millions of rows: no foreign keys checked per row, one index per way of reading them
    (a contact's history of a type; an organisation's volume of a type)."""

    id = models.BigAutoField(primary_key=True)
    organisation = models.ForeignKey(Organisation, on_delete=models.CASCADE, related_name="+", db_constraint=False)
    event_id = models.CharField(max_length=200, help_text="The sender's id: a repeat is accepted and ignored.")
    type = models.CharField(max_length=100)
    contact_id = models.BigIntegerField()
    properties = models.JSONField(default=dict, blank=True)
    occurred_at = models.DateTimeField()
    received_at = models.DateTimeField()

    class Meta:
        constraints = [models.UniqueConstraint(fields=["organisation", "event_id"], name="event_unique_id")]
        indexes = [
            models.Index(fields=["organisation", "contact_id", "type", "occurred_at"], name="event_contact_type_idx"),
            models.Index(fields=["organisation", "type", "occurred_at"], name="event_type_time_idx"),
        ]

    def __str__(self) -> str:
        return f"{self.type} {self.event_id}"


class EventType(models.Model):
    """The catalogue of event types an organisation sends, with their observed properties (name → type and
    examples), for the console and the segment and trigger builders."""

    organisation = models.ForeignKey(Organisation, on_delete=models.CASCADE, related_name="event_types")
    name = models.CharField(max_length=100)
    total_count = models.BigIntegerField(default=0)
    first_seen_at = models.DateTimeField()
    last_seen_at = models.DateTimeField()
    properties = models.JSONField(default=dict, blank=True)

    class Meta:
        ordering = ["name"]
        constraints = [models.UniqueConstraint(fields=["organisation", "name"], name="event_type_unique_name")]

    def __str__(self) -> str:
        return self.name


class EventFeedCursor(models.Model):
    """How far this organisation's external event_service feed has been read."""

    organisation = models.OneToOneField(Organisation, on_delete=models.CASCADE, related_name="event_feed_cursor")
    position = models.CharField(max_length=500, blank=True, default="")
    updated_at = models.DateTimeField(auto_now=True)

    def __str__(self) -> str:
        return f"{self.organisation} at {self.position or 'the start'}"
