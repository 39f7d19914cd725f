from __future__ import annotations

from collections.abc import Callable
from functools import wraps
from typing import Any

from django.contrib.auth.views import redirect_to_login
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render
from django.utils import timezone


def member_required(view: Callable[..., HttpResponse]) -> Callable[..., HttpResponse]:
    """Console pages: sign-in required, and an organisation to act in. Renders in the organisation's timezone."""

    @wraps(view)
    def wrapper(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
        if not request.user.is_authenticated:
            return redirect_to_login(request.get_full_path())
        actor = getattr(request, "actor", None)
        if actor is None:
            return render(request, "no_organisation.html", status=403)
        with timezone.override(actor.organisation.timezone):
            return view(request, *args, **kwargs)

    return wrapper
