from __future__ import annotations

from collections.abc import Callable

from django.http import HttpRequest, HttpResponse

from audiences.access import Actor, actor_for_user, with_client_ip


def console_actor(request: HttpRequest) -> Actor | None:
    """The signed-in user acting in the organisation they last switched to (or their first one)."""
    if not request.user.is_authenticated:
        return None
    actor = actor_for_user(request.user, request.session.get("organisation_id"))
    if actor is not None and request.session.get("organisation_id") != str(actor.organisation.pk):
        request.session["organisation_id"] = str(actor.organisation.pk)
    return with_client_ip(actor, request) if actor is not None else None


class CurrentOrganisationMiddleware:
    """Sets `request.actor` for console pages. API requests authenticate inside DRF instead."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        if request.path.startswith(("/api/", "/static/", "/admin/", "/t/")):
            request.actor = None  # type: ignore[attr-defined]
        else:
            request.actor = console_actor(request)  # type: ignore[attr-defined]
        return self.get_response(request)
