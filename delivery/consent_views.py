"""The recipient's public pages behind the signed links in every message: unsubscribe (/u/<token>) and the
preference centre (/p/<token>). No login, cookie or CSRF token: the signed token is the credential, and mail
providers' RFC 8058 one-click POSTs carry nothing else. A GET never changes anything (link scanners follow
links); every invalid token — tampered, expired, another organisation's, naming no contact — gets the same
neutral page, and a client that keeps trying bad tokens is refused for a while (audiences.throttling). The client
is the real one behind a trusted proxy (config.client_ip), so one client's bad tokens do not lock out everyone
behind the same proxy. A valid RFC 8058 one-click POST is never refused: mailbox providers send those from a few
shared addresses, and refusing one would keep mail flowing to someone who asked to stop.

Placed in delivery for the reason given in delivery/consent.py.
"""

from __future__ import annotations

import time
from typing import Any

from django.conf import settings
from django.core.exceptions import ValidationError
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render
from django.views.decorators.cache import never_cache
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_http_methods

from audiences.throttling import window_count
from compliance import services as compliance
from compliance.models import Unsubscribe
from config.client_ip import client_network
from delivery import consent

REASONS = [
    ("", "Prefer not to say"),
    ("too_many", "Too many emails"),
    ("not_relevant", "Not relevant to me"),
    ("never_signed_up", "I never signed up"),
    ("other", "Other"),
]
REASON_LABELS = dict(REASONS)


def _limited(request: HttpRequest) -> HttpResponse | None:
    ip = client_network(request)
    used, limit, reset = window_count(f"recipient:{ip}", settings.RECIPIENT_LINK_RATE_LIMIT)
    failures, failure_limit, failure_reset = window_count(
        f"recipient-bad:{ip}", settings.RECIPIENT_LINK_FAILURE_LIMIT, add=0
    )
    if used > limit or failures >= failure_limit:
        wait = max(1, int((reset if used > limit else failure_reset) - time.time()))
        response = render(request, "compliance/public/neutral.html", {"limited": True}, status=429)
        response["Retry-After"] = str(wait)
        return response
    return None


def _neutral(request: HttpRequest) -> HttpResponse:
    window_count(f"recipient-bad:{client_network(request)}", settings.RECIPIENT_LINK_FAILURE_LIMIT)
    return render(request, "compliance/public/neutral.html", {})


def _masked(address: str) -> str:
    name, at, domain = address.partition("@")
    if not at:
        return address[:3] + "…" if address else ""
    return f"{name[:1]}…@{domain}"


def _reason(request: HttpRequest) -> str:
    code = request.POST.get("reason", "")
    label = REASON_LABELS.get(code, "")
    detail = request.POST.get("reason_detail", "").strip()
    if code == "other" and detail:
        return f"Other: {detail}"[:500]
    return label if code else ""


@csrf_exempt
@never_cache
@require_http_methods(["GET", "POST"])
def unsubscribe_view(request: HttpRequest, token: str) -> HttpResponse:
    one_click = request.method == "POST" and request.POST.get("List-Unsubscribe") == "One-Click"
    # A one-click POST is judged by its token first (a signature check; the database only for a valid one), so a
    # valid one goes through whatever the client's counters say.
    recipient = consent.resolve_unsubscribe(token) if one_click else None
    if recipient is None:
        limited = _limited(request)
        if limited is not None:
            return limited
        if not one_click:
            recipient = consent.resolve_unsubscribe(token)
        if recipient is None:
            return _neutral(request)
    contact = recipient.contact
    context: dict[str, Any] = {
        "organisation": contact.organisation,
        "address": _masked(contact.email or contact.phone),
        "preferences_url": consent.preferences_link(contact),
        "reasons": REASONS,
    }
    if request.method == "GET":
        preference = compliance.preference_for(contact)
        context["already"] = preference.unsubscribed_at is not None
        return render(request, "compliance/public/unsubscribe.html", context)
    consent.recipient_unsubscribe(
        recipient=recipient,
        source=Unsubscribe.Source.ONE_CLICK if one_click else Unsubscribe.Source.PAGE,
        reason="" if one_click else _reason(request),
    )
    if one_click:
        # RFC 8058: the mail client posts and reads nothing back; 200, no redirect.
        return HttpResponse("Unsubscribed.", content_type="text/plain; charset=utf-8")
    return render(request, "compliance/public/unsubscribed.html", context)


PAGE_CHANNELS = [("email", "Email"), ("sms", "SMS"), ("whatsapp", "WhatsApp")]


def _preference_changes(request: HttpRequest, current: Any) -> dict[str, Any]:
    """The page's form as preference changes. Channels and categories the page does not show keep their state."""
    posted = request.POST
    shown = {code for code, _ in PAGE_CHANNELS}
    switched_on = set(posted.getlist("channels_on"))
    disabled_channels = [c for c in current.disabled_channels if c not in shown]
    disabled_channels += [c for c in shown if c not in switched_on]
    categories = [c for c in current.disabled_categories if c != "transactional"]
    if posted.get("transactional") != "on":
        categories.append("transactional")
    return {
        "global_opt_out": posted.get("global_opt_out") == "on",
        "unsubscribed": posted.get("marketing") != "on",
        "disabled_categories": categories,
        "disabled_channels": disabled_channels,
        "quiet_hours_start": posted.get("quiet_hours_start") or None,
        "quiet_hours_end": posted.get("quiet_hours_end") or None,
    }


@csrf_exempt
@never_cache
@require_http_methods(["GET", "POST"])
def preferences_view(request: HttpRequest, token: str) -> HttpResponse:
    limited = _limited(request)
    if limited is not None:
        return limited
    recipient = consent.resolve_preferences(token)
    if recipient is None:
        return _neutral(request)
    contact = recipient.contact
    errors: dict[str, list[str]] = {}
    saved = False
    status = 200
    if request.method == "POST":
        actor = compliance.recipient_actor(contact.organisation, "preference centre")
        try:
            compliance.preference_update(
                actor=actor,
                contact=contact,
                changes=_preference_changes(request, compliance.preference_for(contact)),
                source="recipient_page",
            )
            saved = True
        except ValidationError as exc:
            errors, status = exc.message_dict, 400
    preference = compliance.preference_for(contact)
    context = {
        "organisation": contact.organisation,
        "address": _masked(contact.email or contact.phone),
        "preference": preference,
        "channels": [(code, label, code not in preference.disabled_channels) for code, label in PAGE_CHANNELS],
        "errors": errors,
        "saved": saved,
    }
    return render(request, "compliance/public/preferences.html", context, status=status)
