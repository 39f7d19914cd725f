"""Tenancy and role chokepoints. Views never check membership or roles themselves; they call these.

An `Actor` is whoever is doing something inside one organisation: a signed-in member (with their role there) or
an API key (with the key's role). Services take it as the keyword-only `actor` argument.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from django.core.exceptions import PermissionDenied

from audiences.models import ApiKey, Membership, Organisation, Role
from config.client_ip import UNKNOWN, client_ip

if TYPE_CHECKING:
    from django.contrib.auth.models import AbstractBaseUser
    from django.db.models import Model

# Roles allowed to change campaigns and their configuration.
CAMPAIGN_WRITERS = frozenset({Role.ADMIN, Role.MARKETER})
ORGANISATION_ADMINS = frozenset({Role.ADMIN})
# Provider receipts (which mark messages complained and suppress addresses) and inbound messages (a STOP turns a
# channel off): what a provider key is for, never an analyst's or compliance officer's.
PROVIDER_POSTERS = frozenset({Role.ADMIN, Role.MARKETER, Role.PROVIDER})
# Client apps reading a contact's in-app inbox and marking messages read (an open).
INBOX_CLIENTS = frozenset({Role.ADMIN, Role.MARKETER, Role.PROVIDER})


@dataclass(frozen=True)
class Actor:
    organisation: Organisation
    role: str
    user: AbstractBaseUser | None = None
    api_key: ApiKey | None = None
    # A system actor (celery-beat, management commands) acts for the organisation without a person or key.
    system: str = ""
    # The client address the request came from (config.client_ip), for the audit log; empty outside a request.
    ip: str = ""

    @property
    def label(self) -> str:
        if self.api_key is not None:
            return f"API key '{self.api_key.name}' ({self.api_key.prefix}…)"
        if self.user is not None:
            return self.user.get_username()
        return self.system or "system"

    @property
    def history_user(self) -> AbstractBaseUser | None:
        return self.user

    def stamp(self, instance: Model, reason: str = "") -> Model:
        """Mark `instance` so its next historical record names this actor (and why, if given)."""
        instance._history_user = self.user  # type: ignore[attr-defined]
        instance._history_actor_label = self.label  # type: ignore[attr-defined]
        if reason:
            instance._change_reason = reason  # type: ignore[attr-defined]
        return instance


def system_actor(organisation: Organisation, name: str) -> Actor:
    return Actor(organisation=organisation, role=Role.ADMIN, system=name)


def actor_for_user(user: AbstractBaseUser, organisation_id: object | None = None) -> Actor | None:
    """The user's actor in the given organisation, or in their first one; None when they belong to none."""
    memberships = Membership.objects.select_related("organisation").filter(user=user)
    if organisation_id is not None:
        membership = memberships.filter(organisation_id=organisation_id).first()
        if membership is not None:
            return Actor(organisation=membership.organisation, role=membership.role, user=user)
    # Without a choice in the session: the organisation the user joined first (their "home").
    membership = memberships.order_by("created_at", "id").first()
    if membership is None:
        return None
    return Actor(organisation=membership.organisation, role=membership.role, user=user)


def with_client_ip(actor: Actor, request: Any) -> Actor:
    """The actor, stamped with the address of the client behind `request` (a Django or DRF request), which the
    audit log records."""
    address = client_ip(request)
    return dataclasses.replace(actor, ip="" if address == UNKNOWN else address)


def actor_for_api_key(api_key: ApiKey) -> Actor:
    return Actor(organisation=api_key.organisation, role=api_key.role, api_key=api_key)


def can_write_campaigns(actor: Actor) -> bool:
    return actor.role in CAMPAIGN_WRITERS


def require_campaign_write(actor: Actor) -> None:
    if not can_write_campaigns(actor):
        raise PermissionDenied(f"The {actor.role} role can view campaigns but not change them.")


def require_provider_post(actor: Actor) -> None:
    if actor.role not in PROVIDER_POSTERS:
        raise PermissionDenied(f"The {actor.role} role cannot post receipts or inbound messages.")


def require_inbox_client(actor: Actor) -> None:
    if actor.role not in INBOX_CLIENTS:
        raise PermissionDenied(f"The {actor.role} role cannot use contacts' inboxes.")


def require_organisation_admin(actor: Actor) -> None:
    if actor.role not in ORGANISATION_ADMINS:
        raise PermissionDenied("Only organisation admins can do this.")
