"""Tracking endpoints behind the signed links in every message.

They verify the token and answer (redirect / pixel); recording opens and clicks as engagement events belongs to
the analytics issue and will hang off these same views.
"""

from __future__ import annotations

import base64

from django.http import HttpRequest, HttpResponse, HttpResponseNotFound, HttpResponseRedirect
from django.views.decorators.cache import never_cache

from campaigns.content import links

PIXEL = base64.b64decode("R0lGODlhAQABAIAAAAAAAP///yH5BAEAAAAALAAAAAABAAEAAAIBRAA7")


@never_cache
def click_redirect_view(request: HttpRequest, token: str) -> HttpResponse:
    """Redirect to the URL inside a valid click token, and nowhere else (this is not an open redirect)."""
    try:
        _message_id, target = links.read_click(token)
    except links.BadToken:
        return HttpResponseNotFound("This link is not valid.", content_type="text/plain")
    if not target.lower().startswith(("http://", "https://")):
        return HttpResponseNotFound("This link is not valid.", content_type="text/plain")
    return HttpResponseRedirect(target)


@never_cache
def open_pixel_view(request: HttpRequest, token: str) -> HttpResponse:
    # Always the pixel, valid token or not: a broken image tells nobody anything and a mail client shows no error.
    return HttpResponse(PIXEL, content_type="image/gif")
