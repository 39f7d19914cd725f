"""Writes for organisations, memberships and API keys."""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from django.contrib.auth import get_user_model
from django.core.exceptions import ValidationError
from django.db import transaction
from django.utils import timezone

from audiences.access import Actor, require_organisation_admin, system_actor
from audiences.models import ApiKey, Membership, Organisation, Role
from compliance.audit import audit_record

if TYPE_CHECKING:
    from django.contrib.auth.models import AbstractBaseUser

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
    "sms_sender_id",
    "postal_address",
)


@transaction.atomic
def organisation_update(*, actor: Actor, changes: dict[str, object]) -> Organisation:
    require_organisation_admin(actor)
    organisation = Organisation.objects.select_for_update().get(pk=actor.organisation.pk)
    unknown = set(changes) - set(ORGANISATION_SETTINGS)
    if unknown:
        raise ValidationError({field: ["This field cannot be changed."] for field in sorted(unknown)})
    if "timezone" in changes:
        _validate_timezone(changes["timezone"])
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
