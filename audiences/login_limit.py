"""The limit on sign-in attempts, for the console and the Django admin alike (django-axes, configured in settings:
AXES_*). A run of failed passwords for one account, or from one client (its real address behind a trusted proxy,
config.client_ip), locks that account or client out until the cool-off ends or an admin resets it (the admin's
"Access attempts", or `manage.py axes_reset`). The locked-out page says so; the lockout itself is audited.
"""

from __future__ import annotations

import logging
from typing import Any

from django.conf import settings
from django.contrib import admin, messages
from django.contrib.admin.forms import AdminAuthenticationForm
from django.contrib.auth import get_user_model
from django.contrib.auth.forms import AuthenticationForm
from django.db import transaction
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render
from django.urls import reverse

from audiences.access import system_actor, with_client_ip
from audiences.models import Membership
from compliance.audit import audit_record
from config.client_ip import UNKNOWN, client_network

logger = logging.getLogger(__name__)

LOCKOUT_STATUS = 429


def axes_client_ip(request: HttpRequest) -> str | None:
    """AXES_CLIENT_IP_CALLABLE: the client as limits count it (an IPv6 client by its /64), None when the server gave
    no address (axes stores an IP field)."""
    address = client_network(request)
    return None if address == UNKNOWN else address


def lockout_message() -> str:
    minutes = max(1, int(settings.AXES_COOLOFF_TIME.total_seconds() // 60))
    return (
        f"Too many failed sign-in attempts. Sign-in for this account or from your network is locked for {minutes} "
        "minutes; try again later, or ask an administrator to unlock it."
    )


def lockout_response(request: HttpRequest, original_response: Any = None, credentials: Any = None) -> HttpResponse:
    """AXES_LOCKOUT_CALLABLE: the login page the attempt came from, with the lockout message, as a 429."""
    username = (credentials or {}).get("username") or request.POST.get("username", "")
    message = lockout_message()
    if request.path.startswith(reverse("admin:login")):
        # The admin's login template shows the messages framework's messages.
        messages.error(request, message)
        context = {
            **admin.site.each_context(request),
            "form": AdminAuthenticationForm(request, initial={"username": username}),
            "title": "Log in",
            "app_path": request.get_full_path(),
            "username": username,
        }
        return render(request, "admin/login.html", context, status=LOCKOUT_STATUS)
    context = {
        "form": AuthenticationForm(request, initial={"username": username}),
        "lockout_message": message,
        "next": request.POST.get("next", request.GET.get("next", "")),
    }
    return render(request, "registration/login.html", context, status=LOCKOUT_STATUS)


def reset_on_sign_in(sender: Any, request: HttpRequest, user: Any, **_: Any) -> None:
    """user_logged_in receiver: a successful sign-in clears that account's failures, and only those. (axes' own
    AXES_RESET_ON_SUCCESS also clears every failure from the client's address, so anyone with an account of their
    own could sign in to it between guesses at someone else's and never reach the limit.)"""
    from axes.handlers.proxy import AxesProxyHandler

    username = user.get_username()
    if username:  # without one, reset_attempts would clear everyone's
        AxesProxyHandler.reset_attempts(username=username)


def lockout_audit(sender: Any, request: HttpRequest, username: str | None, ip_address: str | None, **_: Any) -> None:
    """axes' user_locked_out receiver: one audit entry in each organisation the account belongs to, when the
    lockout starts (axes also signals every refused attempt during it, which carries no failure count)."""
    if getattr(request, "axes_failures_since_start", None) is None:
        return
    user = get_user_model().objects.filter(username=username).first() if username else None
    memberships = Membership.objects.select_related("organisation").filter(user=user) if user else []
    details = {"username": username or "", "path": request.path}
    with transaction.atomic():
        for membership in memberships:
            audit_record(
                actor=with_client_ip(system_actor(membership.organisation, "login limit"), request),
                action="auth.lockout",
                target=user,
                details=details,
            )
    # An unknown account (or one in no organisation) belongs to no organisation's log: the warning is its record.
    logger.warning("Sign-in locked out after repeated failures: %s", {**details, "ip": ip_address or ""})
