"""Signed links carried by every message: click tracking, open pixel, unsubscribe and preference centre.

A click token carries the message id and the exact target URL, with an HMAC-SHA256 (keyed from SECRET_KEY, one key
per purpose) over both; the redirect goes only to the URL inside a valid token, so the endpoint is not an open
redirect. Unsubscribe and preference tokens also carry their issue time and stay valid for 90 days (CAN-SPAM asks
for 30). Tokens are compact (no JSON, no compression) because bulk sending signs several per message.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import html
import json
import re
import time
from collections.abc import Callable
from functools import lru_cache

from django.conf import settings

TOKEN_DAYS = 90
_SIGNATURE_BYTES = 16


class BadToken(ValueError):
    pass


@lru_cache(maxsize=16)
def _key(purpose: str) -> bytes:
    return hmac.new(settings.SECRET_KEY.encode(), f"campaign-service.links.{purpose}".encode(), hashlib.sha256).digest()


_URLSAFE = bytes.maketrans(b"+/", b"-_")


def _b64(data: bytes) -> str:
    # binascii directly: base64.urlsafe_b64encode's Python wrapper costs more than the encoding itself.
    return binascii.b2a_base64(data, newline=False).translate(_URLSAFE).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def sign(purpose: str, *fields: str) -> str:
    payload = "\n".join(fields).encode()
    # hmac.digest is the one-shot C path: bulk sending signs several links per message.
    signature = hmac.digest(_key(purpose), payload, "sha256")[:_SIGNATURE_BYTES]
    return f"{_b64(payload)}.{_b64(signature)}"


def unsign(purpose: str, token: str, *, count: int) -> list[str]:
    try:
        encoded, signature = token.split(".", 1)
        payload = _unb64(encoded)
        given = _unb64(signature)
    except (ValueError, TypeError) as exc:
        raise BadToken("malformed token") from exc
    expected = hmac.digest(_key(purpose), payload, "sha256")[:_SIGNATURE_BYTES]
    if not hmac.compare_digest(given, expected):
        raise BadToken("bad signature")
    fields = payload.decode("utf-8", "strict").split("\n")
    if len(fields) != count:
        raise BadToken("wrong shape")
    return fields


def _base() -> str:
    return settings.SITE_URL.rstrip("/")


def click_url(message_id: str, target: str) -> str:
    return f"{_base()}/t/c/{sign('click', message_id, target)}"


def open_url(message_id: str) -> str:
    return f"{_base()}/t/o/{sign('open', message_id)}.gif"


def unsubscribe_token(organisation_id: str, contact_id: str, message_id: str = "") -> str:
    return sign("unsubscribe", organisation_id, contact_id, message_id, str(int(time.time())))


def unsubscribe_url(organisation_id: str, contact_id: str, message_id: str = "", *, token: str = "") -> str:
    return f"{_base()}/u/{token or unsubscribe_token(organisation_id, contact_id, message_id)}"


def preferences_url(organisation_id: str, contact_id: str) -> str:
    return f"{_base()}/p/{sign('preferences', organisation_id, contact_id, str(int(time.time())))}"


def read_click(token: str) -> tuple[str, str]:
    message_id, target = unsign("click", token, count=2)
    return message_id, target


def read_unsubscribe(token: str, *, now: float | None = None) -> tuple[str, str, str]:
    organisation_id, contact_id, message_id, issued = unsign("unsubscribe", token, count=4)
    if (now or time.time()) - int(issued) > TOKEN_DAYS * 86400:
        raise BadToken("expired")
    return organisation_id, contact_id, message_id


def tracker(message_id: str, keep: frozenset[str]) -> Callable[[str], str]:
    """click_url for this message, except for links in `keep` (our own unsubscribe and preference links)."""

    signed: dict[str, str] = {}  # the HTML and the text part link to the same places: sign each target once

    def track(target: str) -> str:
        target = target.strip()
        if target in keep or not target.lower().startswith(("http://", "https://")):
            return target
        if target not in signed:
            signed[target] = click_url(message_id, target)
        return signed[target]

    return track


_HREF = re.compile(r"""(<a\b[^>]*?\bhref\s*=\s*)(["'])(.*?)\2""", re.IGNORECASE | re.DOTALL)


@lru_cache(maxsize=1024)
def tracked_template_source(source: str) -> str:
    """The HTML template with every link routed through click tracking at render time, rewritten once per
    template instead of once per message: static http(s) hrefs become `{{ cs_link("<url>") }}`, hrefs built from
    template code are wrapped in `{% filter cs_track %}…{% endfilter %}`; anything else stays."""

    def replace(match: re.Match[str]) -> str:
        prefix, quote, raw = match.groups()
        if "{{" in raw or "{%" in raw:
            return f"{prefix}{quote}{{% filter cs_track %}}{raw}{{% endfilter %}}{quote}"
        target = html.unescape(raw).strip()
        if not target.lower().startswith(("http://", "https://")):
            return match.group(0)
        return f"{prefix}{quote}{{{{ cs_link({json.dumps(target)}) }}}}{quote}"

    return _HREF.sub(replace, source)
