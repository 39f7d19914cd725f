"""Tracking endpoints behind the signed links in every message: they verify the token, record the open or click
(analytics.services: attributed to its message, machine opens flagged) and answer (redirect / pixel)."""

from __future__ import annotations

import base64

from django.http import HttpRequest, HttpResponse, HttpResponseNotFound, HttpResponseRedirect
from django.views.decorators.cache import never_cache

from analytics.services import engagement_record_tracking
from campaigns.content import links
from config.client_ip import client_ip


def _client(request: HttpRequest) -> dict[str, str]:
    return {
        "user_agent": request.headers.get("User-Agent", "")[:500],
        "ip": client_ip(request),
        "method": request.method or "GET",
    }


PIXEL = base64.b64decode("R0lGODlhAQABAIAAAAAAAP///yH5BAEAAAAALAAAAAABAAEAAAIBRAA7")


@never_cache
def click_redirect_view(request: HttpRequest, token: str) -> HttpResponse:
    """Redirect to the URL inside a valid click token, and nowhere else (this is not an open redirect)."""
    try:
        message_id, target = links.read_click(token)
    except links.BadToken:
        return HttpResponseNotFound("This link is not valid.", content_type="text/plain")
    if not target.lower().startswith(("http://", "https://")):
        return HttpResponseNotFound("This link is not valid.", content_type="text/plain")
    engagement_record_tracking(kind="click", message_id=message_id, url=target, **_client(request))
    return HttpResponseRedirect(target)


@never_cache
def open_pixel_view(request: HttpRequest, token: str) -> HttpResponse:
    # Always the pixel, valid token or not: a broken image tells nobody anything and a mail client shows no error.
    try:
        message_id = links.read_open(token)
    except links.BadToken:
        message_id = None
    if message_id is not None:
        engagement_record_tracking(kind="open", message_id=message_id, **_client(request))
    return HttpResponse(PIXEL, content_type="image/gif")
