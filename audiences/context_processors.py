from __future__ import annotations

from typing import Any

from django.http import HttpRequest

from audiences.models import Organisation


def organisation(request: HttpRequest) -> dict[str, Any]:
    actor = getattr(request, "actor", None)
    if actor is None:
        return {"current_actor": None}
    return {
        "current_actor": actor,
        "current_organisation": actor.organisation,
        "my_organisations": Organisation.objects.filter(memberships__user=request.user).order_by("name"),
    }
