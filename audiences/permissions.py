from __future__ import annotations

from typing import Any

from rest_framework import exceptions, permissions

from audiences.access import Actor, actor_for_user


def request_actor(request: Any) -> Actor | None:
    """The actor behind a DRF request: the API key's, or the signed-in member's in their current organisation."""
    if isinstance(request.auth, Actor):
        return request.auth
    user = getattr(request, "user", None)
    if user is None or not user.is_authenticated:
        return None
    session = getattr(request._request, "session", None)
    organisation_id = session.get("organisation_id") if session is not None else None
    return actor_for_user(user, organisation_id)


class IsOrganisationMember(permissions.BasePermission):
    message = "You are not a member of any organisation."

    def has_permission(self, request: Any, view: Any) -> bool:
        if not (request.user and request.user.is_authenticated):
            raise exceptions.NotAuthenticated()
        actor = getattr(request, "actor", None) or request_actor(request)
        if actor is None:
            return False
        request.actor = actor
        return True
