"""Writes for organisations, memberships and API keys."""

from __future__ import annotations

import csv
import hashlib
import hmac
import io
import logging
import re
import secrets
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING, Any
from uuid import uuid4
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.exceptions import PermissionDenied, ValidationError
from django.core.files.uploadedfile import UploadedFile
from django.db import connection, transaction
from django.db.models import F, ProtectedError, Value
from django.db.models.functions import Coalesce, Concat, Now
from django.utils import timezone

from audiences.access import Actor, require_organisation_admin, system_actor
from audiences.adapters import segment_query_provider
from audiences.contacts import (
    MAX_BATCH,
    UpsertResult,
    contacts_upsert_rows,
    contacts_upsert_stream,
    validate_contact,
)
from audiences.contacts import STANDARD as STANDARD_CONTACT_FIELDS
from audiences.models import (
    ApiKey,
    Contact,
    ContactImport,
    Event,
    Membership,
    Organisation,
    Role,
    Segment,
    SegmentKind,
    SegmentMember,
    new_webhook_secret,
)
from audiences.rules import RuleError
from audiences.segments import compiler_for, parse_external_query
from audiences.signals import contacts_deleting
from compliance.audit import audit_record
from config import metrics
from config.errors import Conflict

if TYPE_CHECKING:
    from django.contrib.auth.models import AbstractBaseUser

logger = logging.getLogger(__name__)

API_KEY_PREFIX = "cs_"
# Recording "last used" on every request would turn each API read into a write; a minute's precision is plenty.
LAST_USED_RESOLUTION = timedelta(minutes=1)


@dataclass(frozen=True)
class IssuedApiKey:
    api_key: ApiKey
    secret: str  # the full key; shown once, never stored


def _hash_key(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def _validate_timezone(name: object) -> None:
    try:
        ZoneInfo(str(name))
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise ValidationError(
            {"timezone": [f"Unknown timezone {name!s}; use an IANA name like Europe/Paris."]}
        ) from exc


@transaction.atomic
def organisation_create(
    *,
    slug: str,
    name: str,
    admin_email: str | None = None,
    admin_password: str | None = None,
    timezone_name: str = "UTC",
) -> Organisation:
    _validate_timezone(timezone_name)
    organisation = Organisation(slug=slug, name=name, timezone=timezone_name)
    organisation.full_clean()
    actor = system_actor(organisation, "create_org")
    actor.stamp(organisation, "created")
    organisation.save()
    audit_record(actor=actor, action="organisation.create", target=organisation, details={"slug": slug})
    if admin_email:
        user = user_get_or_create(email=admin_email, password=admin_password)
        membership_set(organisation=organisation, user=user, role=Role.ADMIN, actor=actor)
    return organisation


def user_get_or_create(*, email: str, password: str | None = None) -> AbstractBaseUser:
    user_model = get_user_model()
    user = user_model.objects.filter(username__iexact=email).first()
    if user is None:
        user = user_model(username=email.lower(), email=email.lower())
        if password:
            user.set_password(password)
        else:
            user.set_unusable_password()
        user.save()
    return user


@transaction.atomic
def membership_set(*, organisation: Organisation, user: AbstractBaseUser, role: str, actor: Actor) -> Membership:
    membership, created = Membership.objects.get_or_create(
        organisation=organisation, user=user, defaults={"role": role}
    )
    if not created and membership.role != role:
        membership.role = role
        actor.stamp(membership, "role changed")
        membership.save(update_fields=["role"])
    audit_record(
        actor=actor,
        action="membership.create" if created else "membership.update",
        target=membership,
        details={"user": user.get_username(), "role": role},
    )
    return membership


@transaction.atomic
def api_key_create(
    *, actor: Actor, name: str, role: str = Role.MARKETER, check_permission: bool = True
) -> IssuedApiKey:
    if check_permission:
        require_organisation_admin(actor)
    prefix = API_KEY_PREFIX + secrets.token_hex(6)
    secret = f"{prefix}_{secrets.token_urlsafe(32)}"
    api_key = ApiKey(
        organisation=actor.organisation,
        name=name,
        role=role,
        prefix=prefix,
        key_hash=_hash_key(secret),
        created_by=actor.user,
    )
    api_key.full_clean()
    actor.stamp(api_key, "created")
    api_key.save()
    audit_record(actor=actor, action="api_key.create", target=api_key, details={"name": name, "role": role})
    return IssuedApiKey(api_key=api_key, secret=secret)


@transaction.atomic
def api_key_revoke(*, actor: Actor, api_key: ApiKey) -> ApiKey:
    require_organisation_admin(actor)
    if api_key.organisation_id != actor.organisation.pk:
        raise ApiKey.DoesNotExist
    if api_key.revoked_at is None:
        api_key.revoked_at = timezone.now()
        actor.stamp(api_key, "revoked")
        api_key.save(update_fields=["revoked_at"])
        audit_record(actor=actor, action="api_key.revoke", target=api_key)
    return api_key


def api_key_authenticate(secret: str) -> ApiKey | None:
    """The active key matching `secret`, or None. Records when it was last used (at most once a minute)."""
    if not secret.startswith(API_KEY_PREFIX) or secret.count("_") < 2:
        return None
    prefix = secret[: len(API_KEY_PREFIX) + 12]
    api_key = ApiKey.objects.select_related("organisation").filter(prefix=prefix, revoked_at__isnull=True).first()
    if api_key is None or not hmac.compare_digest(api_key.key_hash, _hash_key(secret)):
        return None
    now = timezone.now()
    if api_key.last_used_at is None or now - api_key.last_used_at >= LAST_USED_RESOLUTION:
        # A plain UPDATE: touching last_used_at is bookkeeping, not a change worth a history row.
        ApiKey.objects.filter(pk=api_key.pk).update(last_used_at=now)
        api_key.last_used_at = now
    return api_key


ORGANISATION_SETTINGS = (
    "name",
    "timezone",
    "default_messages_per_minute",
    "default_messages_per_hour",
    "default_quiet_hours_start",
    "default_quiet_hours_end",
    "sender_name",
    "sender_email",
    "reply_to_email",
    "verified_senders",
    "sms_sender_id",
    "postal_address",
    "channel_limits_per_minute",
    "frequency_caps",
    "unknown_event_contacts",
    "currency",
    "global_control_percent",
)


CHANNELS = ("email", "sms", "whatsapp", "in_app", "webhook")


def _clean_frequency_caps(value: object) -> dict[str, dict[str, int]]:
    """{channel: {"count": N, "days": D}}: at most N marketing messages per contact in D days (default 1)."""
    if not isinstance(value, dict):
        raise ValidationError({"frequency_caps": ['An object such as {"email": {"count": 3, "days": 1}}.']})
    clean: dict[str, dict[str, int]] = {}
    for channel, rule in value.items():
        if channel not in CHANNELS:
            raise ValidationError({"frequency_caps": [f"Unknown channel {channel!r}."]})
        if rule in (None, {}):
            continue
        count = rule.get("count") if isinstance(rule, dict) else None
        days = rule.get("days", 1) if isinstance(rule, dict) else None
        valid = all(isinstance(x, int) and not isinstance(x, bool) for x in (count, days))
        if not valid or not 1 <= count <= 1000 or not 1 <= days <= 365:  # type: ignore[operator]
            raise ValidationError({"frequency_caps": [f"{channel}: count 1-1000 and days 1-365."]})
        clean[channel] = {"count": count, "days": days}  # type: ignore[dict-item]
    return clean


def _clean_channel_limits(value: object) -> dict[str, int]:
    """{channel: messages per minute}; empty or missing values mean unlimited and are dropped."""
    if not isinstance(value, dict):
        raise ValidationError({"channel_limits_per_minute": ["An object of channel: messages per minute."]})
    clean: dict[str, int] = {}
    for channel, limit in value.items():
        if channel not in CHANNELS:
            raise ValidationError({"channel_limits_per_minute": [f"Unknown channel {channel!r}."]})
        if limit in (None, ""):
            continue
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
            raise ValidationError({"channel_limits_per_minute": [f"{channel}: a whole number of at least 1."]})
        clean[channel] = limit
    return clean


@transaction.atomic
def organisation_update(*, actor: Actor, changes: dict[str, object]) -> Organisation:
    require_organisation_admin(actor)
    organisation = Organisation.objects.select_for_update().get(pk=actor.organisation.pk)
    unknown = set(changes) - set(ORGANISATION_SETTINGS)
    if unknown:
        raise ValidationError({field: ["This field cannot be changed."] for field in sorted(unknown)})
    if "timezone" in changes:
        _validate_timezone(changes["timezone"])
    if "frequency_caps" in changes:
        changes = {**changes, "frequency_caps": _clean_frequency_caps(changes["frequency_caps"])}
    if "channel_limits_per_minute" in changes:
        changes = {**changes, "channel_limits_per_minute": _clean_channel_limits(changes["channel_limits_per_minute"])}
    before = {field: str(getattr(organisation, field)) for field in changes}
    for field, value in changes.items():
        setattr(organisation, field, value)
    organisation.full_clean()
    actor.stamp(organisation, "settings updated")
    organisation.save()
    audit_record(
        actor=actor,
        action="organisation.update",
        target=organisation,
        details={field: {"from": before[field], "to": str(getattr(organisation, field))} for field in changes},
    )
    return organisation


@transaction.atomic
def organisation_rotate_webhook_secret(*, actor: Actor) -> Organisation:
    require_organisation_admin(actor)
    organisation = Organisation.objects.select_for_update().get(pk=actor.organisation.pk)
    organisation.webhook_secret = new_webhook_secret()
    actor.stamp(organisation, "webhook secret rotated")
    organisation.save(update_fields=["webhook_secret", "updated_at"])
    audit_record(actor=actor, action="organisation.rotate_webhook_secret", target=organisation)
    return organisation


# --- contacts -------------------------------------------------------------------------------------------------

CONTACT_WRITERS = frozenset({Role.ADMIN, Role.MARKETER})


def require_contact_write(actor: Actor) -> None:
    if actor.role not in CONTACT_WRITERS:
        raise PermissionDenied(f"The {actor.role} role cannot change contacts.")


def contacts_upsert(*, actor: Actor, rows: list[object]) -> UpsertResult:
    """Bulk create-or-update (up to 10,000 a call) in one set-based statement. Audited as one entry."""
    require_contact_write(actor)
    with transaction.atomic():
        result = contacts_upsert_rows(organisation=actor.organisation, rows=rows)
        if result.accepted:
            audit_record(
                actor=actor,
                action="contacts.upsert",
                target=actor.organisation,
                details={"created": result.created, "updated": result.updated, "rejected": len(result.rejected)},
            )
    return result


@transaction.atomic
def contact_create(*, actor: Actor, data: dict[str, object]) -> Contact:
    require_contact_write(actor)
    clean, errors = validate_contact(data)
    if errors:
        raise ValidationError(errors)
    if Contact.objects.filter(organisation=actor.organisation, external_id=clean["external_id"]).exists():
        raise ValidationError({"external_id": ["A contact with this external_id already exists."]})
    contacts_upsert_rows(organisation=actor.organisation, rows=[clean])
    contact = Contact.objects.get(organisation=actor.organisation, external_id=clean["external_id"])
    audit_record(actor=actor, action="contact.create", target=contact, details={"external_id": contact.external_id})
    return contact


@transaction.atomic
def contact_update(*, actor: Actor, contact: Contact, data: dict[str, object]) -> Contact:
    """Partial update; attributes merge (a null value removes that attribute)."""
    require_contact_write(actor)
    clean, errors = validate_contact(data, partial=True)
    if errors:
        raise ValidationError(errors)
    if "external_id" in clean and clean["external_id"] != contact.external_id:
        raise ValidationError({"external_id": ["The external_id of a contact cannot change."]})
    clean["external_id"] = contact.external_id
    contacts_upsert_rows(organisation=actor.organisation, rows=[clean])
    audit_record(actor=actor, action="contact.update", target=contact, details={"fields": sorted(set(data))})
    contact.refresh_from_db()
    return contact


@transaction.atomic
def contact_delete(*, actor: Actor, contact: Contact) -> None:
    require_contact_write(actor)
    audit_record(actor=actor, action="contact.delete", target=contact, details={"external_id": contact.external_id})
    contacts_deleting.send(sender=Contact, organisation_id=contact.organisation_id, contact_ids=[contact.pk])
    # Events reference contacts without a database FK (ingestion speed), so they go with the contact here.
    Event.objects.filter(organisation_id=contact.organisation_id, contact_id=contact.pk).delete()
    contact.delete()


# --- segments -------------------------------------------------------------------------------------------------

SEGMENT_FIELDS = ("name", "description", "kind", "rules", "external_query", "external_segment_id")


def _validate_segment(organisation: Organisation, segment: Segment) -> None:
    errors: dict[str, list[str]] = {}
    segment.name = segment.name.strip()
    if not segment.name:
        errors["name"] = ["This field may not be blank."]
    elif Segment.objects.filter(organisation=organisation, name__iexact=segment.name).exclude(pk=segment.pk).exists():
        errors["name"] = ["A segment with this name already exists."]
    if segment.kind == SegmentKind.RULES:
        if segment.rules is None:
            errors["rules"] = ["A rules segment needs a rule tree."]
        else:
            try:
                # Compile with this segment excluded from references, so it cannot include itself.
                compiler_for(organisation).compile(segment.rules, seen=frozenset({segment.pk}))
            except RuleError as exc:
                errors["rules"] = exc.as_messages()
    else:
        segment.rules = None
    if segment.kind != SegmentKind.EXTERNAL:
        segment.external_segment_id = ""
    elif segment.external_segment_id:
        if segment.external_query.strip():
            errors["external_query"] = ["A pre-built segment is resolved by its reference; it takes no query."]
    elif segment.kind == SegmentKind.EXTERNAL:
        if not segment.external_query.strip():
            errors["external_query"] = ["An external segment needs the query isA_Data should run."]
        elif segment_query_provider().embedded:
            try:
                compiler_for(organisation).compile(parse_external_query(segment.external_query))
            except RuleError as exc:
                errors["external_query"] = exc.as_messages()
    if errors:
        raise ValidationError(errors)


@transaction.atomic
def segment_create(*, actor: Actor, data: dict[str, object]) -> Segment:
    require_contact_write(actor)
    segment = Segment(organisation=actor.organisation, created_by=actor.user)
    for name in SEGMENT_FIELDS:
        if name in data:
            setattr(segment, name, data[name])
    _validate_segment(actor.organisation, segment)
    actor.stamp(segment, "created")
    segment.save()
    audit_record(actor=actor, action="segment.create", target=segment, details={"kind": segment.kind})
    return segment


@transaction.atomic
def segment_update(*, actor: Actor, segment: Segment, data: dict[str, object]) -> Segment:
    require_contact_write(actor)
    segment = Segment.objects.select_for_update().get(pk=segment.pk, organisation=actor.organisation)
    if "kind" in data and data["kind"] != segment.kind:
        raise ValidationError({"kind": ["A segment's kind cannot change; create a new segment."]})
    for name in SEGMENT_FIELDS:
        if name in data:
            setattr(segment, name, data[name])
    _validate_segment(actor.organisation, segment)
    actor.stamp(segment, "updated")
    segment.save()
    audit_record(actor=actor, action="segment.update", target=segment, details={"fields": sorted(data)})
    return segment


def segment_references(segment: Segment) -> list[str]:
    """Names of other segments whose rules refer to this one."""
    needle = str(segment.pk)
    return [
        other.name
        for other in Segment.objects.filter(organisation=segment.organisation, kind=SegmentKind.RULES)
        .exclude(pk=segment.pk)
        .extra(where=["rules::text LIKE %s"], params=[f"%{needle}%"])
    ]


@transaction.atomic
def segment_delete(*, actor: Actor, segment: Segment) -> None:
    require_contact_write(actor)
    users = segment_references(segment)
    if users:
        raise Conflict(
            f"Segment {segment.name!r} is used by other segments: {', '.join(users)}.",
            code="segment_in_use",
            used_by=users,
        )
    actor.stamp(segment, "deleted")
    audit_record(actor=actor, action="segment.delete", target=segment)
    try:
        segment.delete()
    except ProtectedError as exc:
        raise Conflict(
            f"Segment {segment.name!r} is the audience of a campaign; remove it there first.",
            code="segment_in_use",
        ) from exc


@dataclass(frozen=True)
class MembersResult:
    added: int
    removed: int
    unknown_external_ids: list[str]
    total: int


@transaction.atomic
def segment_set_members(
    *, actor: Actor, segment: Segment, external_ids: list[str], mode: str = "replace"
) -> MembersResult:
    """Upload the ids of a static segment: `replace` its members, `add` to them or `remove` from them."""
    require_contact_write(actor)
    if segment.kind != SegmentKind.STATIC:
        raise Conflict("Only static segments take uploaded members.", code="not_static")
    ids = list(dict.fromkeys(str(x).strip() for x in external_ids if str(x).strip()))
    if len(ids) > 1_000_000:
        raise ValidationError({"external_ids": ["At most 1,000,000 ids per upload."]})
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT e FROM unnest(%s::text[]) AS e WHERE NOT EXISTS (SELECT 1 FROM audiences_contact c"
            " WHERE c.organisation_id = %s AND c.external_id = e) LIMIT 1000",
            [ids, actor.organisation.pk],
        )
        unknown = [row[0] for row in cursor.fetchall()]
        removed = added = 0
        if mode == "replace":
            cursor.execute(
                "DELETE FROM audiences_segmentmember m WHERE m.segment_id = %s AND m.contact_id NOT IN ("
                " SELECT c.id FROM audiences_contact c WHERE c.organisation_id = %s AND c.external_id = ANY(%s))",
                [segment.pk, actor.organisation.pk, ids],
            )
            removed = cursor.rowcount
        if mode in ("replace", "add"):
            cursor.execute(
                "INSERT INTO audiences_segmentmember (segment_id, contact_id) SELECT %s, c.id FROM audiences_contact c"
                " WHERE c.organisation_id = %s AND c.external_id = ANY(%s) ON CONFLICT DO NOTHING",
                [segment.pk, actor.organisation.pk, ids],
            )
            added = cursor.rowcount
        elif mode == "remove":
            cursor.execute(
                "DELETE FROM audiences_segmentmember m USING audiences_contact c WHERE m.segment_id = %s"
                " AND m.contact_id = c.id AND c.organisation_id = %s AND c.external_id = ANY(%s)",
                [segment.pk, actor.organisation.pk, ids],
            )
            removed = cursor.rowcount
        else:
            raise ValidationError({"mode": ["One of replace, add, remove."]})
    total = SegmentMember.objects.filter(segment=segment).count()
    audit_record(
        actor=actor,
        action="segment.members",
        target=segment,
        details={"mode": mode, "added": added, "removed": removed, "unknown": len(unknown), "total": total},
    )
    return MembersResult(added=added, removed=removed, unknown_external_ids=unknown, total=total)


def segment_refresh_external(*, segment: Segment, force: bool = False) -> int:
    """Re-resolve an external segment through the intelligent_query service into its members.

    Skipped while the last resolution is younger than EXTERNAL_SEGMENT_MAX_AGE_SECONDS (unless forced) or when
    the embedded engine is in use (it compiles the query directly). Returns the member count."""
    provider = segment_query_provider()
    if segment.kind != SegmentKind.EXTERNAL or provider.embedded:
        return SegmentMember.objects.filter(segment=segment).count()
    max_age = timedelta(seconds=settings.EXTERNAL_SEGMENT_MAX_AGE_SECONDS)
    if not force and segment.members_refreshed_at and timezone.now() - segment.members_refreshed_at < max_age:
        return SegmentMember.objects.filter(segment=segment).count()
    # Resolved in full before anything is replaced: a failing service (AdapterError) keeps the last members.
    if segment.external_segment_id:
        external_ids = list(provider.resolve_segment(segment.organisation, segment.external_segment_id))
    else:
        external_ids = list(provider.resolve(segment.organisation, segment.external_query))
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute("DELETE FROM audiences_segmentmember WHERE segment_id = %s", [segment.pk])
        cursor.execute(
            "INSERT INTO audiences_segmentmember (segment_id, contact_id) SELECT %s, c.id FROM audiences_contact c"
            " WHERE c.organisation_id = %s AND c.external_id = ANY(%s) ON CONFLICT DO NOTHING",
            [segment.pk, segment.organisation_id, external_ids],
        )
        count = cursor.rowcount
        Segment.objects.filter(pk=segment.pk).update(members_refreshed_at=timezone.now())
    return count


def prebuilt_segments(organisation: Organisation) -> list[dict[str, Any]]:
    """intelligent_query's pre-built segments (name, size, updated), each with the id of our segment that
    references it, if any (None: not picked yet). AdapterError when the service fails."""
    listed = segment_query_provider().segments(organisation)
    ours = dict(
        Segment.objects.filter(
            organisation=organisation, external_segment_id__in=[item.id for item in listed]
        ).values_list("external_segment_id", "pk")
    )
    return [{**item.as_dict(), "segment": str(ours[item.id]) if item.id in ours else None} for item in listed]


@transaction.atomic
def segment_add_prebuilt(*, actor: Actor, external_segment_id: str) -> tuple[Segment, bool]:
    """Our segment that references one of intelligent_query's pre-built segments (made once, audited), for
    campaigns to include like any segment; its members are resolved through the service when it is used. Returns
    the segment and whether it was made now. AdapterError when the service cannot say which segments it has."""
    require_contact_write(actor)
    existing = Segment.objects.filter(organisation=actor.organisation, external_segment_id=external_segment_id).first()
    if existing is not None:
        return existing, False
    listed = {item.id: item for item in segment_query_provider().segments(actor.organisation)}
    item = listed.get(external_segment_id)
    if item is None:
        raise ValidationError({"id": [f"The audience service has no pre-built segment {external_segment_id!r}."]})
    name = item.name
    if Segment.objects.filter(organisation=actor.organisation, name__iexact=name).exists():
        name = f"{item.name} (isA_Data)"[:200]
    segment = Segment(
        organisation=actor.organisation,
        created_by=actor.user,
        name=name,
        kind=SegmentKind.EXTERNAL,
        external_segment_id=item.id,
        description=f"isA_Data pre-built segment {item.id}",
    )
    _validate_segment(actor.organisation, segment)
    actor.stamp(segment, "created")
    segment.save()
    audit_record(
        actor=actor, action="segment.create", target=segment, details={"kind": segment.kind, "prebuilt": item.id}
    )
    return segment, True


# --- CSV import -------------------------------------------------------------------------------------------------

IMPORT_CHUNK = MAX_BATCH  # rows per batch written
NUMBER = re.compile(r"^-?\d+(\.\d+)?$")


def csv_value(raw: str) -> object:
    """A CSV cell as an attribute value: true/false → boolean, numerals → number, anything else text."""
    text = raw.strip()
    if text.lower() in ("true", "false"):
        return text.lower() == "true"
    if NUMBER.match(text) and len(text) < 16:
        return float(text) if "." in text else int(text)
    return text


CsvPlan = list[tuple[int, str, bool]]  # per column: cell index, field or attribute name, whether an attribute


def csv_plan(header: Sequence[str]) -> CsvPlan:
    """How to read each row of a file with this header, worked out once: a column named external_id or a standard
    field fills that field, any other column (an "attributes." prefix is optional) an attribute. A name that
    appears twice takes the later column's cells."""
    last: dict[str, int] = {}
    for index, column in enumerate(header):
        last[column] = index  # first place in the header, last column of that name
    plan: CsvPlan = []
    for column, index in last.items():
        name = column.strip()
        if name == "external_id" or name in STANDARD_CONTACT_FIELDS:
            plan.append((index, name, False))
        else:
            plan.append((index, name.removeprefix("attributes."), True))
    return plan


def csv_row_to_contact(
    cells: Sequence[str], plan: CsvPlan, values: dict[str, object] | None = None
) -> dict[str, object]:
    """A CSV row as a contact: empty cells are left out (the stored value stays), cells past the row's end too.

    `values` remembers what csv_value made of each attribute text (an import repeats the same plans, countries
    and flags on most rows)."""
    contact: dict[str, object] = {}
    attributes: dict[str, object] = {}
    width = len(cells)
    for index, name, is_attribute in plan:
        if index >= width:
            continue
        value = cells[index].strip()
        if not value:
            continue
        if not is_attribute:
            contact[name] = value
            continue
        if values is None:
            attributes[name] = csv_value(value)
            continue
        parsed = values.get(value, values)  # the dict itself: not seen yet
        if parsed is values:
            parsed = csv_value(value)
            if len(values) < CSV_VALUE_MEMORY:
                values[value] = parsed
        attributes[name] = parsed
    if attributes:
        contact["attributes"] = attributes
    return contact


CSV_VALUE_MEMORY = 50_000  # distinct attribute texts an import remembers


@transaction.atomic
def contact_import_start(*, actor: Actor, upload: UploadedFile) -> ContactImport:
    require_contact_write(actor)
    name = (upload.name or "contacts.csv").rsplit("/", 1)[-1][:255]
    if not name.lower().endswith(".csv"):
        raise ValidationError({"file": ["Upload a .csv file."]})
    head = upload.read(4096)
    upload.seek(0)
    try:
        first_line = head.decode("utf-8-sig").splitlines()[0] if head else ""
    except UnicodeDecodeError as exc:
        raise ValidationError({"file": ["The file must be UTF-8 text."]}) from exc
    if "external_id" not in [c.strip() for c in next(csv.reader([first_line]), [])]:
        raise ValidationError({"file": ["The first line must be a header with an external_id column."]})
    job = ContactImport(organisation=actor.organisation, filename=name, created_by=actor.user)
    job.file.save(f"{uuid4().hex}.csv", upload, save=False)
    job.save()
    audit_record(actor=actor, action="contacts.import", target=job, details={"filename": name})
    from audiences.tasks import contacts_import_task
    from config.outage import task_enqueue_on_commit

    # A broker that is down does not fail the upload: the job is pending in PostgreSQL and
    # contact_imports_pump_task starts it when Redis is back.
    task_enqueue_on_commit(contacts_import_task, str(job.pk))
    return job


def contact_import_run(import_id: object) -> ContactImport | None:
    """Process an import in chunks, recording progress after each. Safe to run again after a crash: it resumes
    after the rows already processed (upserts are idempotent anyway)."""
    claimed = ContactImport.objects.filter(
        pk=import_id, status__in=[ContactImport.Status.PENDING, ContactImport.Status.RUNNING]
    ).update(status=ContactImport.Status.RUNNING, started_at=Coalesce("started_at", Now()))
    if not claimed:
        return None  # finished already, or unknown
    job = ContactImport.objects.select_related("organisation").get(pk=import_id)
    try:
        with job.file.open("rb") as handle:
            text = io.TextIOWrapper(handle, encoding="utf-8-sig", newline="")
            total = _count_rows(text) - 1
            ContactImport.objects.filter(pk=job.pk).update(total_rows=max(total, 0))
            text.seek(0)
            contacts_upsert_stream(
                organisation=job.organisation,
                batches=_import_batches(text, skip=job.processed_rows),
                on_batch=lambda line_numbers, result: _import_progress(job, line_numbers, result),
            )
            text.detach()  # the file object closes the handle, not the wrapper
    except Exception as exc:
        # Whatever went wrong, the import must not stay "running" forever: say so on the import page.
        logger.exception("contact import %s failed", job.pk)
        ContactImport.objects.filter(pk=job.pk).update(
            status=ContactImport.Status.FAILED, error=f"{type(exc).__name__}: {exc}"[:2000], finished_at=Now()
        )
        _discard_upload(job)
        return ContactImport.objects.get(pk=job.pk)
    ContactImport.objects.filter(pk=job.pk).update(status=ContactImport.Status.COMPLETED, finished_at=Now())
    _discard_upload(job)
    return ContactImport.objects.get(pk=job.pk)


def _count_rows(text: io.TextIOWrapper) -> int:
    """The rows csv.reader would give (blank lines included), for the progress bar. A file with no quote and no
    bare carriage return has one row per line, counted without parsing; otherwise csv.reader counts."""
    lines, ending, plain = 0, "", True
    for chunk in iter(lambda: text.read(1 << 20), ""):
        if '"' in chunk or chunk.count("\r") != chunk.count("\r\n") or chunk.endswith("\r"):
            plain = False
            break
        lines += chunk.count("\n")
        ending = chunk[-1]
    text.seek(0)
    if not plain:
        lines = sum(1 for _ in csv.reader(text))
        text.seek(0)
        return lines
    return lines + (ending not in ("", "\n"))  # a last line without its line break


def _discard_upload(job: ContactImport) -> None:
    """The uploaded CSV holds addresses in clear, which the contact store keeps only encrypted (audiences.pii):
    once the import has finished, the file goes; the counts and the rejected-rows report stay. (A worker that
    died mid-import leaves the job running and the file in place, so the import resumes.)"""
    if job.file:
        job.file.delete(save=False)
    ContactImport.objects.filter(pk=job.pk).update(file="")


def _import_batches(text: Iterable[str], *, skip: int) -> Iterator[tuple[list[int], list[dict[str, object]]]]:
    """(line numbers, contacts) chunks of the CSV, after the `skip` rows an interrupted run already did. Blank
    lines are passed over, as csv.DictReader does."""
    reader = csv.reader(text)
    header = next(reader, None)
    if header is None:
        return
    plan = csv_plan(header)
    values: dict[str, object] = {}
    lines: list[int] = []
    rows: list[dict[str, object]] = []
    for line_number, cells in enumerate(filter(None, reader), start=2):  # line 1 is the header
        if line_number - 1 <= skip:
            continue
        lines.append(line_number)
        rows.append(csv_row_to_contact(cells, plan, values))
        if len(rows) >= IMPORT_CHUNK:
            yield lines, rows
            lines, rows = [], []
    if rows:
        yield lines, rows


def _import_progress(job: ContactImport, line_numbers: list[int], result: UpsertResult) -> None:
    report = io.StringIO()
    writer = csv.writer(report)
    for rejected in result.rejected:
        reasons = "; ".join(f"{field}: {' '.join(messages)}" for field, messages in rejected["errors"].items())
        writer.writerow([line_numbers[rejected["index"]], _csv_safe(rejected["external_id"] or ""), _csv_safe(reasons)])
    metrics.count_many(
        ("contacts_imported", {"outcome": outcome}, n)
        for outcome, n in (("created", result.created), ("updated", result.updated), ("rejected", len(result.rejected)))
    )
    ContactImport.objects.filter(pk=job.pk).update(
        processed_rows=F("processed_rows") + len(line_numbers),
        created_count=F("created_count") + result.created,
        updated_count=F("updated_count") + result.updated,
        rejected_count=F("rejected_count") + len(result.rejected),
        rejected_report=Concat("rejected_report", Value(report.getvalue())),
    )


def _csv_safe(text: str) -> str:
    # Spreadsheets run cells starting with = + - @ as formulas; the report quotes them out.
    return "'" + text if text[:1] in ("=", "+", "-", "@", "\t", "\r") else text
