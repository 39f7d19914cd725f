"""The API's gate: who the caller is (a member's session or an API key, inside one organisation) and whether their
role may use this route at all. Services still check each action's role; this gate makes sure no write is left to
chance (a route with no check in its service would otherwise take any key) and that a provider key reaches only
what it is for.

A view says who may use it with `read_roles` (GET, HEAD, OPTIONS) and `write_roles` (everything else); an action
that is a POST but changes nothing (a preview, an estimate) is named in `read_actions`.
"""

from __future__ import annotations

from typing import Any

from rest_framework import exceptions, permissions

from audiences.access import Actor, actor_for_user, with_client_ip
from audiences.models import Role

# Every member role reads; provider keys read nothing but the inbox (audiences.access.INBOX_CLIENTS).
READERS = frozenset({Role.ADMIN, Role.MARKETER, Role.ANALYST, Role.COMPLIANCE})
# Analysts never write; compliance officers write consent, suppressions and erasures (their services refuse them
# the rest).
WRITERS = frozenset({Role.ADMIN, Role.MARKETER, Role.COMPLIANCE})


def request_actor(request: Any) -> Actor | None:
    """The actor behind a DRF request: the API key's, or the signed-in member's in their current organisation."""
    if isinstance(request.auth, Actor):
        return request.auth
    user = getattr(request, "user", None)
    if user is None or not user.is_authenticated:
        return None
    session = getattr(request._request, "session", None)
    organisation_id = session.get("organisation_id") if session is not None else None
    actor = actor_for_user(user, organisation_id)
    return with_client_ip(actor, request) if actor is not None else None


def route_roles(view: Any, method: str) -> frozenset[str]:
    """The roles that may call `view` with `method`."""
    reads = method in permissions.SAFE_METHODS or getattr(view, "action", None) in getattr(view, "read_actions", ())
    if reads:
        return getattr(view, "read_roles", READERS)
    return getattr(view, "write_roles", WRITERS)


class IsOrganisationMember(permissions.BasePermission):
    message = "You are not a member of any organisation."

    def has_permission(self, request: Any, view: Any) -> bool:
        if not (request.user and request.user.is_authenticated):
            raise exceptions.NotAuthenticated()
        actor = getattr(request, "actor", None) or request_actor(request)
        if actor is None:
            return False
        request.actor = actor
        if actor.role not in route_roles(view, request.method):
            raise exceptions.PermissionDenied(refusal(actor.role, request.method))
        return True


def refusal(role: str, method: str) -> str:
    if role == Role.PROVIDER:
        return "A provider key can only post receipts and inbound messages and use contacts' inboxes."
    if method in permissions.SAFE_METHODS:
        return f"The {role} role cannot read this."
    return f"The {role} role cannot change this."
